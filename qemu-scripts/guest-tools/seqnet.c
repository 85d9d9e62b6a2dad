/*
 * seqnet: sequence-numbered UDP traffic for loss/duplication tests (guest side; the host side is
 * test/helpers/seqnet.ts with the same format and the same output lines).
 *
 *   seqnet send DST_IP PORT COUNT PPS SIZE
 *       sends seqs 0..COUNT-1, PPS datagrams/s (0 = unpaced), each SIZE bytes (>= 16).
 *       Prints "VUT-SEQ-SENT n=<sent> err=<errors> retry=<retries> ms=<duration>".
 *       ENOBUFS/EAGAIN (a full qdisc or socket buffer) retries the same seq after 1 ms, so the sender
 *       itself loses nothing; any other sendto error counts in err and that seq is skipped.
 *       Exit 0 if err == 0.
 *   seqnet recv PORT COUNT IDLE_MS [FIRST_MS]
 *       receives until COUNT distinct seqs, or IDLE_MS without a datagram after the first one (or
 *       FIRST_MS, if given and > 0, without any datagram at all). PORT 0 picks a free port.
 *       Prints "VUT-SEQ-LISTENING port=<port>" once bound, "VUT-SEQ-PROGRESS rx=<distinct>" at most
 *       once per second while the count grows, and at the end
 *       "VUT-SEQ rx=<distinct> dup=<n> bad=<n> ooo=<n> missing=<n> gaps=<a-b,...|->" (at most 8
 *       ranges of missing seqs, ",..." if there are more). Exit 0 if every seq arrived once, intact.
 *       SIGTERM/SIGINT end it early (the result line is still printed).
 *
 * Datagram: "VUTS", seq u32 BE, total u32 BE (planned count), size u32 BE (datagram length), then
 * payload byte i (16 <= i < size) = (seq*31 + i*7) & 0xff.
 * bad = wrong magic, size field != length, length < 16, seq >= COUNT, or a payload byte off.
 * dup = a seq seen before. ooo = a new seq lower than the highest seen so far.
 *
 * Built static by build-guest.sh (gcc -static -Os -Wall) and installed as /bin/seqnet in the guest.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR 16
#define MAX_SIZE 65507
#define MAX_BATCH 64    /* datagrams sent per wake-up at most */
#define MAX_LAG 256     /* behind schedule by more than this: re-base instead of bursting */
#define MAX_GAPS 8
/* After the last distinct seq, listen this long (at most IDLE_MS) for late duplicates. */
#define LINGER_MS 200

static volatile sig_atomic_t stop_now;
static void on_signal(int sig) {
  (void)sig;
  stop_now = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
  struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static void put32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void fill(uint8_t* b, uint32_t seq, uint32_t total, uint32_t size) {
  memcpy(b, "VUTS", 4);
  put32(b + 4, seq);
  put32(b + 8, total);
  put32(b + 12, size);
  for (uint32_t i = HDR; i < size; i++) b[i] = (uint8_t)(seq * 31u + i * 7u);
}

/* 1 if the datagram is intact and its seq < count (seq stored), else 0. */
static int check(const uint8_t* b, size_t len, uint32_t count, uint32_t* seq) {
  if (len < HDR || memcmp(b, "VUTS", 4) != 0) return 0;
  uint32_t s = get32(b + 4), size = get32(b + 12);
  if (size != len || s >= count) return 0;
  for (uint32_t i = HDR; i < size; i++)
    if (b[i] != (uint8_t)(s * 31u + i * 7u)) return 0;
  *seq = s;
  return 1;
}

static int num(const char* s, unsigned long max, unsigned long* out) {
  char* end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v > max) return 0;
  *out = v;
  return 1;
}

static int usage(void) {
  fprintf(stderr,
          "usage: seqnet send DST_IP PORT COUNT PPS SIZE\n"
          "       seqnet recv PORT COUNT IDLE_MS [FIRST_MS]\n");
  return 2;
}

static int do_send(char** a) {
  unsigned long port, count, pps, size;
  struct sockaddr_in dst = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, a[0], &dst.sin_addr) != 1 || !num(a[1], 65535, &port) || port == 0 ||
      !num(a[2], 0xffffffffu, &count) || !num(a[3], 10000000, &pps) || !num(a[4], MAX_SIZE, &size) || size < HDR)
    return usage();
  dst.sin_port = htons((uint16_t)port);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("seqnet: socket");
    return 1;
  }
  /* Without IP_RECVERR Linux reports success for a datagram its qdisc dropped (udp_send_skb swallows
   * ENOBUFS); with it the drop comes back as ENOBUFS and we retry instead of losing the seq. */
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one);
  static uint8_t buf[MAX_SIZE];
  unsigned long sent = 0, err = 0, retry = 0;
  const uint64_t period = pps ? 1000000000ull / pps : 0;
  uint64_t t0 = now_ns();
  const uint64_t start = t0;
  uint32_t seq = 0;
  while (seq < count) {
    uint64_t now = now_ns();
    unsigned long due = count;
    if (pps) {
      due = (unsigned long)((now - t0) / period) + 1;
      if (due > seq + MAX_LAG) {
        /* Stalled (vCPU starved, socket blocked): continue at the planned rate from here, no burst. */
        t0 = now - (uint64_t)seq * period;
        due = seq + 1;
      }
      if (due > count) due = count;
    }
    for (int b = 0; b < MAX_BATCH && seq < due; b++) {
      fill(buf, seq, (uint32_t)count, (uint32_t)size);
      ssize_t r = sendto(fd, buf, size, 0, (struct sockaddr*)&dst, sizeof dst);
      if (r < 0) {
        if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
          retry++;
          struct timespec ms = {0, 1000000};
          nanosleep(&ms, NULL);
          continue; /* same seq */
        }
        if (err < 5) fprintf(stderr, "seqnet: sendto seq %u: %s\n", seq, strerror(errno));
        err++;
      } else {
        sent++;
      }
      seq++;
    }
    if (seq < count && pps) {
      /* Sleep to the next datagram's due time, at least 1 ms (small batches, no busy loop). */
      uint64_t next = t0 + (uint64_t)seq * period, min = now_ns() + 1000000ull;
      sleep_until(next > min ? next : min);
    }
  }
  printf("VUT-SEQ-SENT n=%lu err=%lu retry=%lu ms=%llu\n", sent, err, retry,
         (unsigned long long)((now_ns() - start) / 1000000ull));
  fflush(stdout);
  close(fd);
  return err ? 1 : 0;
}

static int do_recv(char** a, int argc) {
  unsigned long port, count, idle, first = 0;
  if (!num(a[0], 65535, &port) || !num(a[1], 0xffffffffu, &count) || count == 0 || !num(a[2], 3600000, &idle) ||
      (argc > 3 && !num(a[3], 3600000, &first)))
    return usage();
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("seqnet: socket");
    return 1;
  }
  /* A large receive buffer so a burst after a stall is not dropped by our own socket (FORCE as
   * root ignores rmem_max). */
  int rcv = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(fd, (struct sockaddr*)&sa, sizeof sa) < 0) {
    perror("seqnet: bind");
    return 1;
  }
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr*)&sa, &sl);
  printf("VUT-SEQ-LISTENING port=%u\n", ntohs(sa.sin_port));
  fflush(stdout);

  /* SIGTERM/SIGINT: print the result line now (no SA_RESTART, so poll returns EINTR). */
  struct sigaction sact = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sact, NULL);
  sigaction(SIGINT, &sact, NULL);
  uint8_t* seen = calloc((count + 7) / 8, 1);
  static uint8_t buf[MAX_SIZE + 1];
  if (!seen) {
    perror("seqnet: calloc");
    return 1;
  }
  unsigned long rx = 0, dup = 0, bad = 0, ooo = 0, printed = 0;
  long long high = -1;
  uint64_t last_rx = 0, last_print = now_ns(), done_at = 0;
  const uint64_t start = now_ns();
  for (;;) {
    uint64_t now = now_ns();
    uint64_t deadline;
    if (done_at) deadline = done_at + (uint64_t)(idle < LINGER_MS ? idle : LINGER_MS) * 1000000ull;
    else if (last_rx) deadline = last_rx + (uint64_t)idle * 1000000ull;
    else deadline = first ? start + (uint64_t)first * 1000000ull : UINT64_MAX;
    if (now >= deadline || stop_now) break;
    uint64_t wake = deadline;
    if (last_print + 1000000000ull < wake) wake = last_print + 1000000000ull;
    int tmo = wake <= now ? 0 : (int)((wake - now + 999999) / 1000000);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, tmo);
    if (n < 0 && errno != EINTR) {
      perror("seqnet: poll");
      return 1;
    }
    while (n > 0) {
      ssize_t len = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (len < 0) break;
      last_rx = now_ns();
      uint32_t seq;
      if (!check(buf, (size_t)len, (uint32_t)count, &seq)) {
        bad++;
      } else if (seen[seq / 8] & (1u << (seq % 8))) {
        dup++;
      } else {
        seen[seq / 8] |= (uint8_t)(1u << (seq % 8));
        rx++;
        if ((long long)seq < high) ooo++;
        else high = seq;
        if (rx == count && !done_at) done_at = last_rx;
      }
    }
    now = now_ns();
    if (now >= last_print + 1000000000ull) {
      last_print = now;
      if (rx != printed) {
        printed = rx;
        printf("VUT-SEQ-PROGRESS rx=%lu\n", rx);
        fflush(stdout);
      }
    }
  }
  char gaps[MAX_GAPS * 24 + 8];
  size_t gl = 0;
  int ng = 0;
  unsigned long missing = 0;
  gaps[0] = '\0';
  for (unsigned long s = 0; s < count;) {
    if (seen[s / 8] & (1u << (s % 8))) {
      s++;
      continue;
    }
    unsigned long e = s;
    while (e + 1 < count && !(seen[(e + 1) / 8] & (1u << ((e + 1) % 8)))) e++;
    missing += e - s + 1;
    if (ng < MAX_GAPS) gl += (size_t)snprintf(gaps + gl, sizeof gaps - gl, "%s%lu-%lu", ng ? "," : "", s, e);
    else if (ng == MAX_GAPS) gl += (size_t)snprintf(gaps + gl, sizeof gaps - gl, ",...");
    ng++;
    s = e + 1;
  }
  printf("VUT-SEQ rx=%lu dup=%lu bad=%lu ooo=%lu missing=%lu gaps=%s\n", rx, dup, bad, ooo, missing, ng ? gaps : "-");
  fflush(stdout);
  close(fd);
  free(seen);
  return missing || dup || bad ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc == 7 && strcmp(argv[1], "send") == 0) return do_send(argv + 2);
  if ((argc == 5 || argc == 6) && strcmp(argv[1], "recv") == 0) return do_recv(argv + 2, argc - 2);
  return usage();
}
