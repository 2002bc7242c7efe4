/* fileio.c: read-only memory maps and whole-file reads. */
#include "common/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

int file_map(file_map_t *m, const char *path) {
  m->data = NULL;
  m->size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    log_error("%s: cannot open: %s", path, strerror(errno));
    return errno == ENOENT ? STRATA_ENOTFOUND : STRATA_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    log_error("%s: not a regular file", path);
    close(fd);
    return STRATA_EIO;
  }
  if (st.st_size > 0) {
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      log_error("%s: mmap of %lld bytes failed: %s", path, (long long)st.st_size, strerror(errno));
      close(fd);
      return STRATA_EIO;
    }
    m->data = p;
    m->size = (size_t)st.st_size;
  }
  close(fd);
  return 0;
}

void file_unmap(file_map_t *m) {
  if (m->data) munmap((void *)m->data, m->size);
  m->data = NULL;
  m->size = 0;
}

int file_read_all(const char *path, size_t max_bytes, char **out, size_t *len) {
  *out = NULL;
  if (len) *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT) return STRATA_ENOTFOUND;
    log_error("%s: cannot open: %s", path, strerror(errno));
    return STRATA_EIO;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap + 1);
  if (!buf) {
    fclose(f);
    return STRATA_ENOMEM;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= max_bytes) {
        log_error("%s: larger than %zu bytes", path, max_bytes);
        free(buf);
        fclose(f);
        return STRATA_ERANGE;
      }
      cap = cap * 2 > max_bytes ? max_bytes : cap * 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        fclose(f);
        return STRATA_ENOMEM;
      }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    log_error("%s: read error", path);
    free(buf);
    return STRATA_EIO;
  }
  buf[n] = 0;
  *out = buf;
  if (len) *len = n;
  return 0;
}

char *path_join(char *buf, size_t n, const char *dir, const char *name) {
  int w = snprintf(buf, n, "%s/%s", dir, name);
  return (w < 0 || (size_t)w >= n) ? NULL : buf;
}

int path_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int path_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}
