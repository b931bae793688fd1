"""Files in and out: recorded load statistics and placement mappings of every engine."""
