from .file_io import atomic_write, unique_temp_name, write_atomic

__all__ = ["atomic_write", "unique_temp_name", "write_atomic"]
