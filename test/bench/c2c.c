// Core-to-core cache-line round trip (cpu A <-> cpu B), to flag benchmark runs made while the host had
// placed the two vCPUs "far" apart (test-rig-facts.md 3.6: ~125 ns near, ~330 ns far; flag > 200 ns).
// Usage: c2c [cpuA cpuB [rounds]] -> prints the median round trip in ns over batches of 1000 round trips.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) atomic_int ping;
static int rounds = 200000;
static int cpuA = 0, cpuB = 1;

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *pong(void *arg) {
  (void)arg;
  pin(cpuB);
  for (int i = 0; i < rounds; i++) {
    while (atomic_load_explicit(&ping, memory_order_acquire) != 2 * i + 1) {}
    atomic_store_explicit(&ping, 2 * i + 2, memory_order_release);
  }
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc >= 3) {
    cpuA = atoi(argv[1]);
    cpuB = atoi(argv[2]);
  }
  if (argc >= 4) rounds = atoi(argv[3]);
  rounds -= rounds % 1000;
  if (rounds < 1000) rounds = 1000;
  pthread_t t;
  pin(cpuA);
  pthread_create(&t, NULL, pong, NULL);
  int batches = rounds / 1000;
  double *ns = malloc(sizeof(double) * batches);
  for (int b = 0; b < batches; b++) {
    double t0 = now();
    for (int j = 0; j < 1000; j++) {
      int i = b * 1000 + j;
      atomic_store_explicit(&ping, 2 * i + 1, memory_order_release);
      while (atomic_load_explicit(&ping, memory_order_acquire) != 2 * i + 2) {}
    }
    ns[b] = (now() - t0) / 1000;
  }
  pthread_join(t, NULL);
  qsort(ns, batches, sizeof(double), cmp);
  printf("%.0f\n", ns[batches / 2]);
  return 0;
}
