"""Image folders with indices, the bag dataset, transforms and demo-data preparation."""
