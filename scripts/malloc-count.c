// LD_PRELOAD allocation counter for scripts/check-allocations.sh: counts every malloc-family call and prints
// "allocations N" on stderr at exit, and "allocations_marked M" for the calls between the program's first and
// second call of nfqlb_malloc_count_mark() (nfqlb-bench marks its packet loop). Forwards to glibc's own entry
// points (no dlsym bootstrap problem).
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static _Atomic unsigned long allocations;
static unsigned long marks[2];
static int marked;

void nfqlb_malloc_count_mark(void) { if (marked < 2) marks[marked++] = allocations; }

void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
void *calloc(size_t n, size_t m) { allocations++; return __libc_calloc(n, m); }
void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n) {
    allocations++;
    *p = __libc_memalign(a, n);
    return *p ? 0 : ENOMEM;
}

__attribute__((destructor)) static void report(void) {
    char line[64];
    int length = snprintf(line, sizeof line, "allocations %lu\n", (unsigned long)allocations);
    if (length > 0) write(2, line, (size_t)length);
    if (marked == 2) {
        length = snprintf(line, sizeof line, "allocations_marked %lu\n", marks[1] - marks[0]);
        if (length > 0) write(2, line, (size_t)length);
    }
}
