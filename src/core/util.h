/* util: small shared helpers — allocation that aborts on OOM, bounded string
 * copies, a growable byte buffer (strbuf), an error list that carries
 * file:line for config/accounts checks, clocks and queue-id generation. */
#ifndef SUBMITD_UTIL_H
#define SUBMITD_UTIL_H

#include <stdarg.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Copies at most n-1 bytes and always NUL-terminates (n > 0). Returns the
 * length of src; a result >= n means truncation. */
size_t str_copy(char *dst, const char *src, size_t n);
/* ASCII case-insensitive comparisons (no locale). */
int str_ieq(const char *a, const char *b);
int str_iprefix(const char *s, const char *prefix); /* 1 if s starts with prefix */
void str_lower(char *s);
/* Wipes memory in a way the compiler cannot elide. */
void mem_wipe(void *p, size_t n);
/* Constant-time equality of two byte strings of the same length. */
int mem_eq_ct(const void *a, const void *b, size_t n);

/* Growable buffer. Always NUL-terminated after any append (b->s may be NULL
 * while len == 0 and nothing was appended). */
struct strbuf {
    char *s;
    size_t len;
    size_t cap;
};
void sb_init(struct strbuf *b);
void sb_free(struct strbuf *b);
void sb_reset(struct strbuf *b);
void sb_append(struct strbuf *b, const void *data, size_t n);
void sb_puts(struct strbuf *b, const char *s);
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_vprintf(struct strbuf *b, const char *fmt, va_list ap);
/* Detaches the buffer (caller frees); b is reset. Never returns NULL. */
char *sb_steal(struct strbuf *b);

/* An error list: each entry is one "file:line: message" (or "file: message"
 * when line is 0) line, ready to print. */
struct errlist {
    char **v;
    size_t n;
};
void errlist_init(struct errlist *e);
void errlist_free(struct errlist *e);
void errlist_add(struct errlist *e, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clocks. */
uint64_t now_ms(void);      /* CLOCK_MONOTONIC in ms */
uint64_t wall_us(void);     /* CLOCK_REALTIME in us */

/* Queue ids: 16 characters from [0-9A-Z] minus I,L,O,U (Crockford base32),
 * time-ordered (48 bits of ms wall clock) + 32 random bits. */
#define QID_LEN 16
void qid_new(char out[QID_LEN + 1]);
int qid_valid(const char *s);

/* Fills buf with cryptographically random bytes (getrandom). 0 on success. */
int random_bytes(void *buf, size_t n);

/* Names a thread "submitd-<role>" (cut to the kernel's 15 bytes), so that
 * top -H, ps -L and perf show what each thread does. */
void thread_name(pthread_t t, const char *role);
/* Makes t a background thread (SCHED_BATCH): when it wakes it does not
 * preempt the thread running on that CPU (an event loop in the middle of
 * its sessions); it runs when a CPU is free or at the next scheduling
 * point, with its fair share. Every thread but the event loops (and the
 * main and control threads) is one. Best effort: 0, or -1 (left as it
 * was). */
int thread_background(pthread_t t);

/* The numbers of the CPUs set in `set`, ascending, at most max of them;
 * returns how many. */
unsigned cpus_in_set(const cpu_set_t *set, int *out, unsigned max);
/* The CPUs this process may run on (sched_getaffinity: a cpuset or taskset
 * narrows it), as cpus_in_set; {0} when it cannot be read. At least 1
 * (max > 0). */
unsigned cpus_allowed(int *out, unsigned max);

/* RFC 5322 date-time for t in local time, e.g. "Sun, 22 Nov 2026 13:30:39 +0000". */
void rfc5322_date(time_t t, char *buf, size_t n);

/* Writes all of buf to fd, retrying on EINTR/short writes. 0 or -1 (errno). */
int write_all(int fd, const void *buf, size_t n);
/* The same at offset off (pwrite). */
int pwrite_all(int fd, const void *buf, size_t n, off_t off);
/* Reads exactly n bytes at offset off, retrying on EINTR/short reads. 0, or
 * -1 with errno (EBADMSG when the file ends first). */
int pread_full(int fd, void *buf, size_t n, off_t off);

struct sockaddr;
/* "192.0.2.1:25" / "[2001:db8::1]:25"; "?" for other families. */
void sockaddr_text(const struct sockaddr *sa, char *buf, size_t n);
/* Reads a whole small file (max bytes) into a NUL-terminated buffer. */
char *read_file_max(const char *path, size_t max, size_t *len_out);
/* The directory part of path into dir: "." when there is none, "/" for "/x". */
void path_dir(const char *path, char *dir, size_t n);

#endif
