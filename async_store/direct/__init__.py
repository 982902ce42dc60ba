"""Direct-to-bucket uploads: the browser sends the bytes to S3, the app signs and confirms.

``store.direct_uploads(app, storage="documents")`` mounts the endpoints Uppy's
``@uppy/aws-s3`` plugin speaks (a presigned POST, presigned multipart with resume), under a
staging prefix and within the storage's limits (``STORE_DIRECT_*``); the view that receives the
finished upload's key calls ``await store["documents"].confirm(key)``, which checks what
arrived and stores it under its final name, and gets the file's record. See ``docs/direct.md``.
"""

from __future__ import annotations

from ._blueprint import mount
from ._keys import STAGING
from ._uploads import DirectUploads

__all__ = ["STAGING", "DirectUploads", "mount"]
