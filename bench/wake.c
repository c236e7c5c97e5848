/*
 * What waking a process on an idle core costs on this machine: the floor
 * under any proxy's time per hop when requests come sparsely (the topology
 * scenario's probe sends one about every 20 ms).
 *
 *   cc -O2 -o /tmp/wake bench/wake.c && /tmp/wake 20000
 *
 * Two processes, one pinned to each of cores 0 and 1, and two pipes. The
 * first sleeps GAP microseconds, writes the time to the second, which reads
 * it, takes the difference and writes it back; ROUNDS times. Prints the
 * median, p90, p99 and maximum of that wake-up latency in microseconds. With
 * a gap of 0 the second process's core rarely idles, which shows the cost
 * of the wake-up itself apart from waking an idle core.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 300 };

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) perror("sched_setaffinity");
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int io(int fd, double *v, int out) {
  ssize_t n = out ? write(fd, v, sizeof *v) : read(fd, v, sizeof *v);
  return n == (ssize_t)sizeof *v ? 0 : -1;
}

int main(int argc, char **argv) {
  int gap = argc > 1 ? atoi(argv[1]) : 20000;
  int to_child[2], to_parent[2];
  if (pipe(to_child) != 0 || pipe(to_parent) != 0) return perror("pipe"), 1;
  pid_t pid = fork();
  if (pid < 0) return perror("fork"), 1;
  if (pid == 0) {
    pin(1);
    for (int i = 0; i < ROUNDS; i++) {
      double t;
      if (io(to_child[0], &t, 0) != 0) _exit(1);
      t = now_us() - t;
      if (io(to_parent[1], &t, 1) != 0) _exit(1);
    }
    _exit(0);
  }
  pin(0);
  static double lat[ROUNDS];
  for (int i = 0; i < ROUNDS; i++) {
    usleep((useconds_t)gap);
    double t = now_us();
    if (io(to_child[1], &t, 1) != 0 || io(to_parent[0], &lat[i], 0) != 0) return perror("pipe io"), 1;
  }
  waitpid(pid, NULL, 0);
  qsort(lat, ROUNDS, sizeof lat[0], cmp);
  printf("gap %d us: wake-up p50 %.1f us, p90 %.1f, p99 %.1f, max %.1f (%d rounds)\n", gap, lat[ROUNDS / 2],
         lat[ROUNDS * 9 / 10], lat[ROUNDS * 99 / 100], lat[ROUNDS - 1], ROUNDS);
  return 0;
}
