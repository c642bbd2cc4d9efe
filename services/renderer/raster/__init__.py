"""Rasterizers for replicas: ``cpu`` (cached tiles), ``cpu-full`` (reference), ``torch``, ``gsplat`` (CUDA)."""

from services.renderer.raster.base import PosedGaussians, Rasterizer, Splats2D, get_rasterizer_class

__all__ = ["PosedGaussians", "Rasterizer", "Splats2D", "get_rasterizer_class"]
