/*
 * `ferry test [busted arguments...]`: runs busted inside ferry's own LuaJIT
 * state, with the embedded ferry modules loaded, so specs exercise the
 * runtime's Lua API (ferry.core's request handle and the fy_ffi_* functions
 * behind it) rather than a stand-in.
 *
 * Besides busted, the state gets one extra module, `ferry.testbed`, which
 * ferry.testing uses to build real requests (a fy_req, parsed
 * and validated by the same code as requests from the wire) and to make one
 * of them the request whose hook is running.
 */
#ifndef FERRY_TEST_CMD_H
#define FERRY_TEST_CMD_H

/*
 * argv[0] is the program, argv[1] "test", the rest is given to busted as its
 * command line (paths, --filter, -o, ...). With no path, busted reads .busted
 * in the current directory, or runs spec/. Returns the process exit status:
 * 0 when every spec passed, 1 otherwise.
 */
int fy_cmd_test(int argc, char **argv);

#endif
