// Preloaded by bun test (bunfig.toml): after each test, fails it loudly if a pgnet process it started is still
// running (and kills it, so the next test starts clean); after the last test file, stops the shared PostgreSQL
// cluster and removes the compiled binary and the working directories made for it.
import { afterAll, afterEach } from "bun:test";
import { PgnetProcess, removeTemporaryDirs } from "./helpers/binary.ts";
import { stopCluster } from "./helpers/cluster.ts";

afterEach(async () => {
  const left = [...PgnetProcess.running];
  if (left.length === 0) return;
  for (const pgnet of left) {
    // one started in a group of its own is killed with its group; any other on its own (never the runner's group)
    if (pgnet.detached) process.kill(-pgnet.child.pid!, "SIGKILL");
    else pgnet.child.kill("SIGKILL");
  }
  await Promise.all(left.map((pgnet) => pgnet.exited));
  throw new Error(`the test left ${left.length} pgnet process(es) running (pid ${left.map((p) => p.child.pid)})`);
});

afterAll(async () => {
  await stopCluster();
  removeTemporaryDirs();
});
