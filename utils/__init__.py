"""The ground floor: processes and gathers, files and locks, logs, schedules, stop signals. Imports nothing of this
project."""
