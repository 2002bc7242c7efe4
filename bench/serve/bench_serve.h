/* bench_serve.h: `strata-bench serve`, the load-testing harness for an OpenAI-compatible server. */
#ifndef STRATA_BENCH_SERVE_H
#define STRATA_BENCH_SERVE_H

/* bench_serve_main: runs the harness with ARGV[1..] as its options (ARGV[0] is the command name,
 * e.g. "serve"); `--help` lists them. Prints the progress bar on stderr, the summary table and one
 * JSON line starting with {"bench":"serve" on stdout, and writes the report files under --out.
 * Returns the process exit status: 0 when the run completed (failed requests are counted, not
 * fatal), 1 when it could not run, 2 on a usage error. Not thread-safe; call from main(). */
int bench_serve_main(int argc, char **argv);

#endif
