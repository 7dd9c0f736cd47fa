"""Shared machinery: processes, gathers, checkpoints, schedules, logging, embedding and exact search."""
