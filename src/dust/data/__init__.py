"""Data: safe array files and learnable toy data."""

from .arrays import ArrayFileError, ArrayWriter, load_array, save_array
from .toy import generate_toy_data, make_kinematics, render_video

__all__ = [
    "ArrayFileError",
    "ArrayWriter",
    "generate_toy_data",
    "load_array",
    "make_kinematics",
    "render_video",
    "save_array",
]
