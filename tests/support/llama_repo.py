"""A tiny llama.cpp stand-in repository: its CMake "build" installs the fake llama-server
(simulated), so the source provider runs git and CMake exactly as for the real one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.engines import fake_executable


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


CMAKELISTS = """cmake_minimum_required(VERSION 3.10)
project(fake_llama NONE)
if(NOT GGML_CUDA)
  message(FATAL_ERROR "CUDA is required")
endif()
file(READ ${CMAKE_SOURCE_DIR}/llama-server.in SCRIPT)
add_custom_target(llama-server ALL
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bin
  COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_SOURCE_DIR}/llama-server.in
          ${CMAKE_BINARY_DIR}/bin/llama-server
  COMMAND chmod +x ${CMAKE_BINARY_DIR}/bin/llama-server
  COMMAND ${CMAKE_COMMAND} -E echo "[100%] Built target llama-server")
"""


def head(repo: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip()


def llama_cpp_repo(tmp_path: Path, *, broken: bool = False) -> Path:
    """A tiny llama.cpp stand-in: its CMake 'build' installs the fake llama-server."""
    repo = tmp_path / "llama.cpp"
    repo.mkdir()
    git("init", "-q", "-b", "master", cwd=repo)
    lists = CMAKELISTS.replace("project(", "project(\nbroken syntax" if broken else "project(")
    (repo / "CMakeLists.txt").write_text(lists)
    (fake_executable(tmp_path / "script", "llama-server")).rename(repo / "llama-server.in")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "b1", cwd=repo)
    return repo
