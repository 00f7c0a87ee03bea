"""Images in, safely: admission of untrusted images for the multimodal (newsreader) path.

:mod:`deployments.vision.images` turns raw bytes, base64 or a ``data:`` URL into a decoded RGB image, or
refuses it with a :class:`~deployments.errors.ServeError` naming the limit or rule it broke. Pure: no Ray,
no model.
"""

from .images import (MEDIA_TYPES, SUPPORTED_FORMATS, AdmittedImage, admit_image, admit_image_async,
                     check_image_count, image_bytes, sniff_format)

__all__ = ["AdmittedImage", "SUPPORTED_FORMATS", "MEDIA_TYPES", "admit_image", "admit_image_async", "image_bytes",
           "sniff_format", "check_image_count"]
