// wanrt: the C++ runtime for engines built by wan-export. One include for everything.
#pragma once

#define WANRT_VERSION "0.1.0"

#include "wanrt/backend.h"
#include "wanrt/manifest.h"
#include "wanrt/pipeline.h"
#include "wanrt/schedulers.h"
#include "wanrt/tensor.h"
#include "wanrt/tokens.h"
#include "wanrt/triton.h"
#ifdef WANRT_HAS_TENSORRT
#include "wanrt/tensorrt.h"
#endif
