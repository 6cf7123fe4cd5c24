"""The declarative layer: apps that live on disks, their functions, jobs, images and volumes."""

from .app import App, Function, Job
from .image import Image
from .volume import Volume

__all__ = ["App", "Function", "Image", "Job", "Volume"]
