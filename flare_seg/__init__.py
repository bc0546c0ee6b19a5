"""flare-seg: two-stage abdominal CT organ segmentation."""

import os as _os

# TensorFlow's oneDNN kernels make CPU 3D convolutions about ten times faster; some builds leave
# them off unless asked. Set before any TensorFlow import (every module imports this package first).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ logging: errors only for library users; the commands choose (see tf_logging).
# A value this package set (marked in TF_LOG_LEVEL_MARK, which child processes inherit too) is not
# the user's choice.
TF_LOG_LEVEL_MARK = "FLARESEG_TF_CPP_MIN_LOG_LEVEL_DEFAULT"
_level = _os.environ.get("TF_CPP_MIN_LOG_LEVEL")
USER_TF_CPP_MIN_LOG_LEVEL = None if _level is None or _level == _os.environ.get(TF_LOG_LEVEL_MARK) else _level
if _level is None:
    _os.environ["TF_CPP_MIN_LOG_LEVEL"] = _os.environ[TF_LOG_LEVEL_MARK] = "2"
# On a GPU: CUDA's stream-ordered allocator returns memory between cases instead of growing a pool,
# so peak GPU memory reflects the largest case, not the sum of all shapes seen.
_os.environ.setdefault("TF_GPU_ALLOCATOR", "cuda_malloc_async")

__version__ = "0.1.0"
