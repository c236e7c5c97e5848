#!/usr/bin/env bash
# Builds ferry's libFuzzer targets with clang, ASan and UBSan.
#
#   spec/fuzz/build.sh [OUT_DIR]     (default: build/fuzz)
#
# Each target is one spec/fuzz/fuzz_<unit>.c linked with core/<unit>.c and
# core/common.c (for fy_strerror, hence libuv). Needs clang and libFuzzer,
# which on Debian 12 come from: apt-get install clang libclang-rt-14-dev
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-build/fuzz}
CC=${CC:-clang}
CFLAGS="-std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
        -fno-sanitize-recover=undefined -Wall -Wextra -Wshadow -Werror -Icore"
UV_CFLAGS=$(pkg-config --cflags libuv)
UV_LIBS=$(pkg-config --libs libuv)

mkdir -p "$OUT"
for unit in proxy_protocol sni; do
  # shellcheck disable=SC2086
  $CC $CFLAGS $UV_CFLAGS -o "$OUT/fuzz_$unit" "spec/fuzz/fuzz_$unit.c" "core/$unit.c" core/common.c $UV_LIBS
  echo "built $OUT/fuzz_$unit"
done
