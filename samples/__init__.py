"""Sample datasets and configs."""
