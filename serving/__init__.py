"""The serving runtime: config, predictors, data plane and protocol front ends.

OpenCV reads its decoder pixel cap once, when cv2 is imported, and then refuses larger images of
every format from their headers: set it here, before any serving module imports cv2.
"""

import os
import sys

if "cv2" not in sys.modules:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")  # limits.max_image_pixels' default
