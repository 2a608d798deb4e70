// Preloaded by bun test (bunfig.toml): after the last test file, stops the shared PostgreSQL cluster and
// removes the compiled binary and the working directories made for it.
import { afterAll } from "bun:test";
import { removeTemporaryDirs } from "./helpers/binary.ts";
import { stopCluster } from "./helpers/cluster.ts";

afterAll(async () => {
  await stopCluster();
  removeTemporaryDirs();
});
