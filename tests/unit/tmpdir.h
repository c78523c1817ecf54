/* tmpdir: a fresh directory under /tmp for a unit test, and its removal.
 * Include after cmocka.h (the helpers assert). */
#ifndef SUBMITD_TEST_TMPDIR_H
#define SUBMITD_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

#include "core/util.h"

/* /tmp/NAME.XXXXXX, created; allocated. */
static inline char *make_tmpdir(const char *name)
{
    char t[256];
    snprintf(t, sizeof(t), "/tmp/%s.XXXXXX", name);
    assert_non_null(mkdtemp(t));
    return xstrdup(t);
}

static inline void rm_rf(const char *path)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
}

#endif
