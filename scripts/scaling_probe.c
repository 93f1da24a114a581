// scaling_probe.c — the machine parameters docs/scaling.md takes from this machine:
//   * one-way cache-line hand-off between two CPUs (two threads pass a token through one line);
//   * an uncontended glibc adaptive mutex lock + unlock (the per-CPU region lock's fast path);
//   * sched_getcpu (glibc >= 2.35 reads it from the rseq area).
// usage: gcc -O2 -pthread scripts/scaling_probe.c -o /tmp/scaling_probe && /tmp/scaling_probe [cpuA cpuB]
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) _Atomic long token;
static long rounds = 1000000;

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *partner(void *arg) {
  pin((int)(long)arg);
  for (long i = 0; i < rounds; ++i) {
    while (atomic_load_explicit(&token, memory_order_acquire) != 2 * i + 1) __builtin_ia32_pause();
    atomic_store_explicit(&token, 2 * i + 2, memory_order_release);
  }
  return 0;
}

int main(int argc, char **argv) {
  const int a = argc > 2 ? atoi(argv[1]) : 0, b = argc > 2 ? atoi(argv[2]) : 1;
  pthread_t t;
  pthread_create(&t, 0, partner, (void *)(long)b);
  pin(a);
  double t0 = now_ns();
  for (long i = 0; i < rounds; ++i) {
    atomic_store_explicit(&token, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&token, memory_order_acquire) != 2 * i + 2) __builtin_ia32_pause();
  }
  double t1 = now_ns();
  pthread_join(t, 0);
  printf("cache-line hand-off cpu %d <-> cpu %d: %.1f ns one way\n", a, b, (t1 - t0) / rounds / 2);

  pthread_mutexattr_t at;
  pthread_mutexattr_init(&at);
  pthread_mutexattr_settype(&at, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_t m;
  pthread_mutex_init(&m, &at);
  const long n = 20000000;
  t0 = now_ns();
  for (long i = 0; i < n; ++i) {
    pthread_mutex_lock(&m);
    __asm__ volatile("" ::: "memory");
    pthread_mutex_unlock(&m);
  }
  t1 = now_ns();
  printf("adaptive mutex lock + unlock, uncontended: %.1f ns\n", (t1 - t0) / n);

  t0 = now_ns();
  for (long i = 0; i < n; ++i) {
    int cpu = sched_getcpu();
    __asm__ volatile("" ::"r"(cpu));
  }
  t1 = now_ns();
  printf("sched_getcpu: %.1f ns\n", (t1 - t0) / n);
  return 0;
}
