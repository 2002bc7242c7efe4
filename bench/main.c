/* main.c: `strata-bench`: engine (the engine benchmark) and serve (the load harness). */
#include <stdio.h>
#include <string.h>

#include "bench/engine/bench_engine.h"
#ifdef STRATA_HAVE_BENCH_SERVE
#include "bench/serve/bench_serve.h"
#endif

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata-bench <mode> [options]\n\n"
          "modes:\n"
          "  engine   run the engine in-process on synthetic requests; prints prefill and decode\n"
          "           tokens/s and step latency as one JSON line\n"
#ifdef STRATA_HAVE_BENCH_SERVE
          "  serve    drive an OpenAI-compatible server with a load pattern and report latency,\n"
          "           throughput and goodput\n"
#endif
          "\n`strata-bench <mode> --help` describes a mode's options.\n");
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "engine") == 0) return bench_engine_main(argc - 1, argv + 1);
#ifdef STRATA_HAVE_BENCH_SERVE
  if (strcmp(argv[1], "serve") == 0) return bench_serve_main(argc - 1, argv + 1);
#endif
  fprintf(stderr, "strata-bench: unknown mode '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
