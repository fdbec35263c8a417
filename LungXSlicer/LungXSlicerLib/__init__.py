"""Helpers of the LungXSlicer module. Everything here except the node code in LungXSlicer.py runs without Slicer
(plain Python, numpy, SimpleITK, slicerio), so CI tests it."""
