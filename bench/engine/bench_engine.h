/* bench_engine.h: `strata-bench engine`, the in-process engine benchmark. */
#ifndef STRATA_BENCH_ENGINE_H
#define STRATA_BENCH_ENGINE_H

int bench_engine_main(int argc, char **argv);

#endif
