// Preloaded by bun test (bunfig.toml): stops the shared PostgreSQL cluster after the last test file.
import { afterAll } from "bun:test";
import { stopCluster } from "./helpers/cluster.ts";

afterAll(async () => {
  await stopCluster();
});
