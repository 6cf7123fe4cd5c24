"""The declarative layer: apps that live on disks, their functions, jobs, images and volumes."""

from .app import App, Function, Job
from .cls import Cls, enter, method
from .functioncall import FunctionCall
from .image import Image
from .volume import Volume

__all__ = ["App", "Cls", "Function", "FunctionCall", "Image", "Job", "Volume", "enter", "method"]
