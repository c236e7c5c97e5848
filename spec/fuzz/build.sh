#!/usr/bin/env bash
# Builds ferry's libFuzzer targets with clang, ASan and UBSan.
#
#   spec/fuzz/build.sh [OUT_DIR]     (default: build/fuzz)
#
# Two kinds of target:
#   - parser targets (fuzz_proxy_protocol, fuzz_sni): one spec/fuzz/fuzz_<unit>.c
#     linked with core/<unit>.c and core/common.c (for fy_strerror, hence libuv);
#   - whole-core targets (fuzz_config, fuzz_request, fuzz_response): linked with
#     every core unit but main.c, the embedded Lua modules, llhttp (strict mode,
#     as CMake builds it), LuaJIT, libuv, c-ares and mbedTLS. The core objects
#     are compiled once into OUT_DIR/obj (again only when a core, Lua or build
#     file changed) and shared by the three.
#
# Needs clang and libFuzzer, which on Debian 12 come from:
#   apt-get install clang libclang-rt-14-dev
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-build/fuzz}
CC=${CC:-clang}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer $SAN
        -Wall -Wextra -Wshadow -Werror -Icore -Iinclude"
UV_CFLAGS=$(pkg-config --cflags libuv)
UV_LIBS=$(pkg-config --libs libuv)

mkdir -p "$OUT"
for unit in proxy_protocol sni; do
  # shellcheck disable=SC2086
  $CC $CFLAGS $UV_CFLAGS -o "$OUT/fuzz_$unit" "spec/fuzz/fuzz_$unit.c" "core/$unit.c" core/common.c $UV_LIBS
  echo "built $OUT/fuzz_$unit"
done

# ---- whole-core targets ---------------------------------------------------
LLHTTP_SRC=${LLHTTP_SRC_DIR:-/usr/share/llhttp}
LLHTTP_INC=${LLHTTP_INCLUDE_DIR:-/usr/share/include/llhttp}
DEP_CFLAGS="$(pkg-config --cflags luajit libuv libcares) -I$LLHTTP_INC -DLLHTTP_STRICT_MODE=1"
DEP_LIBS="$(pkg-config --libs luajit libuv libcares) -lpthread -lm"
# mbedTLS has no pkg-config file on Debian 12; link it when the core uses it.
if grep -qs 'include <mbedtls/' core/*.c core/*.h; then
  DEP_LIBS="$DEP_LIBS -lmbedtls -lmbedx509 -lmbedcrypto"
fi
# Core and llhttp objects: coverage and sanitizers, but warnings are the CMake
# build's business (clang may warn where gcc does not), so no -Werror here.
OBJ_CFLAGS="-std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $SAN -Icore -Iinclude $DEP_CFLAGS"
OBJ="$OUT/obj"
mkdir -p "$OBJ"

# The Lua modules of lua/ferry, embedded the same way as the CMake build does it.
mapfile -t lua_files < <(find lua/ferry -name '*.lua' | LC_ALL=C sort)
lua_list=$(IFS=';'; echo "${lua_files[*]}")
cmake -DOUT="$OBJ/lua_embedded.c" -DROOT="$PWD" "-DFILES=$lua_list" -DCDEF=core/ffi.h -P cmake/embed_lua.cmake

sources=()
for src in core/*.c; do
  [ "$src" = core/main.c ] || sources+=("$src")
done
sources+=("$LLHTTP_SRC/api.c" "$LLHTTP_SRC/http.c" "$LLHTTP_SRC/llhttp.c" "$OBJ/lua_embedded.c")

# Everything is rebuilt when any header, Lua module or this script is newer
# than the stamp; a changed .c file rebuilds its own object.
stamp="$OBJ/.stamp"
newest_dep=$(ls -t core/*.h lua/ferry/*.lua spec/fuzz/build.sh 2>/dev/null | head -1)
full=0
if [ ! -e "$stamp" ] || [ "$newest_dep" -nt "$stamp" ]; then full=1; fi
todo=()
objs=()
for src in "${sources[@]}"; do
  base=$(basename "$src" .c)
  case "$src" in "$LLHTTP_SRC"/*) base="llhttp_$base" ;; esac
  o="$OBJ/$base.o"
  objs+=("$o")
  if [ $full = 1 ] || [ ! -e "$o" ] || [ "$src" -nt "$o" ]; then todo+=("$src:$o"); fi
done
if [ ${#todo[@]} -gt 0 ]; then
  export OBJ_CFLAGS CC
  # shellcheck disable=SC2016
  printf '%s\n' "${todo[@]}" | xargs -P "$(nproc)" -I{} bash -c \
    'src=${1%%:*}; o=${1#*:}; $CC $OBJ_CFLAGS -w -c -o "$o" "$src"' _ {}
  touch "$stamp"
fi

# fuzz_config swaps the config loader's Lua state for a bounded one (see the file).
declare -A extra=([config]="-Wl,--wrap=luaL_newstate,--wrap=luaL_openlibs,--wrap=lua_tonumber" [request]="" [response]="")
for t in config request response; do
  # shellcheck disable=SC2086
  # -rdynamic: LuaJIT's FFI finds the fy_ffi_* functions among the exported symbols.
  $CC $CFLAGS $DEP_CFLAGS -rdynamic -o "$OUT/fuzz_$t" "spec/fuzz/fuzz_$t.c" "${objs[@]}" ${extra[$t]} $DEP_LIBS
  echo "built $OUT/fuzz_$t"
done
