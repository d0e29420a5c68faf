"""The CUDA kernels compile with nvcc, and the TensorRT plugin glue compiles (and its host-side
logic runs) against TensorRT headers.

* nvcc: every ``kernels/src/*.cu`` is compiled for sm_87 (Jetson Orin) only, to stay fast;
  CMake builds sm_87 and sm_90. Skips when nvcc is absent.
* TensorRT: ``TENSORRT_INCLUDE_DIR`` (several directories joined with ``os.pathsep`` are each
  checked) -- ``g++ -fsyntax-only`` of every ``kernels/plugins/*.cpp``, then
  ``tests/cpp/plugin_harness.cpp`` is built with the glue and stub launchers and run: creators,
  fields round trip through getFieldsToSerialize -> createPlugin(kRUNTIME), types and formats.
  Skips when the variable is unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
CU_FILES = sorted((KERNELS / "src").glob("*.cu"))
PLUGIN_FILES = sorted((KERNELS / "plugins").glob("*.cpp"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))
GXX = shutil.which("g++")
TRT_DIRS = [d for d in os.environ.get("TENSORRT_INCLUDE_DIR", "").split(os.pathsep) if d]


def cuda_include() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    if NVCC:
        candidates.insert(0, str(Path(NVCC).resolve().parents[1]))
    for base in candidates:
        if base and (Path(base) / "include" / "cuda_runtime_api.h").exists():
            return Path(base) / "include"
    return None


def test_sources_exist_and_kernels_are_separate_from_glue():
    assert len(CU_FILES) == 3 and len(PLUGIN_FILES) == 4
    for path in CU_FILES + [KERNELS / "include" / "edgeda_kernels.h"]:
        text = path.read_text()
        assert "nvinfer" not in text.lower() and "NvInfer" not in text, f"{path.name} uses TensorRT"
    for path in PLUGIN_FILES:
        text = path.read_text()
        assert "__global__" not in text and "<<<" not in text, f"{path.name} holds kernel code"
        assert "IPluginV2" not in text, f"{path.name} uses the deprecated IPluginV2 API"


def test_cmake_targets_orin_and_hopper():
    text = (KERNELS / "CMakeLists.txt").read_text()
    assert "set(CMAKE_CUDA_ARCHITECTURES 87 90)" in text
    assert "TENSORRT_ROOT" in text and "TENSORRT_INCLUDE_DIR" in text


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA kernels not compile-checked")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_kernel_compiles_with_nvcc(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O2", "-arch=sm_87", f"-I{KERNELS / 'include'}", "-Werror",
           "all-warnings", "-c", str(source), "-o", str(tmp_path / (source.stem + ".o"))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]


needs_trt = pytest.mark.skipif(not TRT_DIRS or GXX is None or cuda_include() is None,
                               reason="TENSORRT_INCLUDE_DIR unset (or g++/CUDA headers missing): "
                                      "plugin glue not compile-checked")


def _gxx(trt_dir: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
           f"-I{KERNELS / 'include'}", f"-I{KERNELS / 'plugins'}", "-isystem", trt_dir,
           "-isystem", str(cuda_include()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@needs_trt
@pytest.mark.parametrize("trt_dir", TRT_DIRS)
@pytest.mark.parametrize("source", PLUGIN_FILES, ids=lambda p: p.name)
def test_plugin_glue_compiles_against_tensorrt_headers(source, trt_dir):
    assert (Path(trt_dir) / "NvInferRuntime.h").exists(), f"no NvInferRuntime.h in {trt_dir}"
    result = _gxx(trt_dir, "-fsyntax-only", str(source))
    assert result.returncode == 0, result.stderr[-4000:]


@needs_trt
@pytest.mark.parametrize("trt_dir", TRT_DIRS)
def test_plugin_glue_host_logic_runs(trt_dir, tmp_path):
    exe = tmp_path / "plugin_harness"
    built = _gxx(trt_dir, str(ROOT / "tests" / "cpp" / "plugin_harness.cpp"),
                 *map(str, PLUGIN_FILES), "-o", str(exe))
    assert built.returncode == 0, built.stderr[-4000:]
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip().endswith("OK"), ran.stdout + ran.stderr
