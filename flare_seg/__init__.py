"""flare-seg: two-stage abdominal CT organ segmentation."""

import os as _os

# TensorFlow's oneDNN kernels make CPU 3D convolutions about ten times faster; some builds leave
# them off unless asked. Set before any TensorFlow import (every module imports this package first).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU: CUDA's stream-ordered allocator returns memory between cases instead of growing a pool,
# so peak GPU memory reflects the largest case, not the sum of all shapes seen.
_os.environ.setdefault("TF_GPU_ALLOCATOR", "cuda_malloc_async")

__version__ = "0.1.0"
