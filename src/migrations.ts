// The SQL API files, embedded in the program in order. Append-only: a released file is never edited.

import netApi from "../sql/0001_net_api.sql" with { type: "text" };
import claimIndexes from "../sql/0002_claim_indexes.sql" with { type: "text" };
import privileges from "../sql/0003_privileges.sql" with { type: "text" };
import enqueueSpeed from "../sql/0004_enqueue_speed.sql" with { type: "text" };
import requestApi from "../sql/0005_request_api.sql" with { type: "text" };
import delivery from "../sql/0006_delivery.sql" with { type: "text" };
import restartReload from "../sql/0007_restart_reload.sql" with { type: "text" };
import enqueueCost from "../sql/0008_enqueue_cost.sql" with { type: "text" };
import wakeOnce from "../sql/0009_wake_once.sql" with { type: "text" };
import claimTable from "../sql/0010_claim_table.sql" with { type: "text" };
import requestWakeOnce from "../sql/0011_request_wake_once.sql" with { type: "text" };
import wakeWithId from "../sql/0012_wake_with_id.sql" with { type: "text" };

export interface Migration {
  version: number;
  name: string;
  text: string;
}

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: "0001_net_api", text: netApi },
  { version: 2, name: "0002_claim_indexes", text: claimIndexes },
  { version: 3, name: "0003_privileges", text: privileges },
  { version: 4, name: "0004_enqueue_speed", text: enqueueSpeed },
  { version: 5, name: "0005_request_api", text: requestApi },
  { version: 6, name: "0006_delivery", text: delivery },
  { version: 7, name: "0007_restart_reload", text: restartReload },
  { version: 8, name: "0008_enqueue_cost", text: enqueueCost },
  { version: 9, name: "0009_wake_once", text: wakeOnce },
  { version: 10, name: "0010_claim_table", text: claimTable },
  { version: 11, name: "0011_request_wake_once", text: requestWakeOnce },
  { version: 12, name: "0012_wake_with_id", text: wakeWithId },
];

export const LATEST_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;
