/* fileio.h: read-only memory maps and whole-file reads, with errors that name the file. */
#ifndef STRATA_FILEIO_H
#define STRATA_FILEIO_H

#include <stddef.h>

typedef struct {
  const void *data; /* the mapping (NULL for an empty file) */
  size_t size;      /* bytes */
} file_map_t;

/* file_map: maps PATH read-only (MAP_PRIVATE). Returns 0 or a negative STRATA_E* code, logging why. */
int file_map(file_map_t *m, const char *path);
void file_unmap(file_map_t *m);

/* file_read_all: reads PATH into a malloc'd, NUL-terminated buffer (*out, *len excludes the NUL).
 * Fails with STRATA_ERANGE past MAX_BYTES. Logs nothing when the file does not exist (returns
 * STRATA_ENOTFOUND) so callers can probe optional files. */
int file_read_all(const char *path, size_t max_bytes, char **out, size_t *len);

/* path_join: DIR "/" NAME into BUF; returns BUF, or NULL when it does not fit. */
char *path_join(char *buf, size_t n, const char *dir, const char *name);
int path_is_dir(const char *path);
int path_exists(const char *path);

#endif
