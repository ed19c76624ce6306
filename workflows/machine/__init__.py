"""File safety and machine settings: atomic writes, folder locks, peak memory, the thread budget, float precision,
shares of a job, and every bundle setting's parser. Imports nothing else of ``workflows``."""
