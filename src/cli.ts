// The command line: commands, flags, environment variables and --help. Parsing only; main.ts acts on it.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseDuration, type SettingFlag, SETTINGS, type SettingValues } from "./config.ts";
import type { EgressPolicyOptions, EgressPreset } from "./egress.ts";
import { EgressPolicy } from "./egress.ts";
import { PgnetError } from "./errors.ts";
import { parseProxy, type Proxy } from "./http.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "./log.ts";
import { PG_NET_API_VERSION, VERSION } from "./version.ts";

/** The egress policy as given (pgnet's own status listener is added once it listens). */
export interface EgressOptions extends Required<Pick<EgressPolicyOptions, "allow" | "deny">> {
  preset: EgressPreset;
  allowInsecureRedirects: boolean;
}

export type Privileges = "pgnet" | "pg_net";
const PRIVILEGES: readonly Privileges[] = ["pgnet", "pg_net"];

export type Command = "run" | "install" | "uninstall" | "status" | "help" | "version";
const COMMANDS: readonly Command[] = ["run", "install", "uninstall", "status", "help", "version"];

export interface CliOptions {
  command: Command;
  /** --database, once or more: names or postgres:// URLs */
  databases: string[];
  /** --all-databases: every database of the server that has schema net */
  allDatabases: boolean;
  /** how often --all-databases looks for databases gaining or losing schema net */
  discoveryIntervalMs: number;
  dataDir: string;
  embeddedPort: number;
  settings: SettingValues;
  logLevel: LogLevel;
  logFormat: LogFormat;
  statusHost: string;
  /** undefined: no status server */
  statusPort?: number;
  statusToken?: string;
  unlogged: boolean;
  egress: EgressOptions;
  /** --ca-file: extra certificate authorities (PEM text) */
  ca?: string;
  /** --proxy: the HTTP proxy every request goes through */
  proxy?: Proxy;
  /** install: switch to pgnet's privileges or pg_net's; unset keeps what the database has */
  privileges?: Privileges;
  /** --log-failures: a line per failed attempt */
  logFailures: boolean;
  /** status: JSON even on a terminal */
  json: boolean;
  yes: boolean;
}

export interface OptionSpec {
  env?: string;
  default?: string;
  help: string;
  type: "string" | "boolean";
  short?: string;
  /** may be given more than once */
  multiple?: boolean;
}

/** Every flag: its environment variable, default and help line (--help and the README's table come from here). */
export const OPTIONS: Readonly<Record<string, OptionSpec>> = {
  database: {
    type: "string",
    short: "d",
    env: "DATABASE_URL",
    multiple: true,
    help: "database name or postgres:// URL (also PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); give it " +
      "again to serve several databases from one process; a server URL without a database serves the one " +
      "pg_net.database_name names (postgres by default)",
  },
  "all-databases": {
    type: "boolean",
    env: "PGNET_ALL_DATABASES",
    help: "serve every database of the server (--database's, or the embedded one) that has schema net, " +
      "noticing databases that gain or lose it",
  },
  "discovery-interval": {
    type: "string",
    env: "PGNET_DISCOVERY_INTERVAL",
    default: "30s",
    help: "with --all-databases, how often the server's databases are looked at again",
  },
  "data-dir": {
    type: "string",
    env: "PGNET_DATA_DIR",
    default: "./pgnet-data",
    help: "embedded PostgreSQL's directory, used when no database is given",
  },
  "embedded-port": {
    type: "string",
    env: "PGNET_EMBEDDED_PORT",
    default: "54329",
    help: "embedded PostgreSQL's port on 127.0.0.1",
  },
  ...Object.fromEntries(
    SETTINGS.map((
      s,
    ) => [s.flag, {
      type: "string",
      env: s.env,
      default: s.default,
      help: s.help + (s.database ? ` (database: ${s.database})` : ""),
    }]),
  ),
  "log-level": { type: "string", env: "PGNET_LOG_LEVEL", default: "info", help: LOG_LEVELS.join(", ") },
  "log-format": {
    type: "string",
    env: "PGNET_LOG_FORMAT",
    default: "text",
    help: "text or json (one JSON object a line)",
  },
  "status-host": { type: "string", env: "PGNET_STATUS_HOST", default: "127.0.0.1", help: "status server address" },
  "status-port": {
    type: "string",
    env: "PGNET_STATUS_PORT",
    default: "8787",
    help: 'status server port; 0 picks a free one, "off" disables it',
  },
  "status-token": {
    type: "string",
    env: "PGNET_STATUS_TOKEN",
    help: "bearer token for POST /reload and /restart; required off loopback",
  },
  egress: {
    type: "string",
    env: "PGNET_EGRESS",
    default: "default",
    help: "egress policy preset: default (denies link-local, cloud metadata, unspecified, multicast and pgnet's own " +
      "status server) or public (also loopback, private, CGNAT and unique-local ranges)",
  },
  "egress-allow": {
    type: "string",
    env: "PGNET_EGRESS_ALLOW",
    help: "comma-separated CIDRs, addresses, host names or *.suffix, each with an optional :port, to allow",
  },
  "egress-deny": {
    type: "string",
    env: "PGNET_EGRESS_DENY",
    help: "the same, to deny; the most specific entry wins, and deny wins a tie",
  },
  "ca-file": {
    type: "string",
    env: "PGNET_CA_FILE",
    help: "PEM file of certificate authorities to trust for https, in addition to the system's (private CAs)",
  },
  proxy: {
    type: "string",
    env: "PGNET_PROXY",
    help: "send every request through this HTTP proxy, http://[user:password@]host:port (CONNECT for https); " +
      "HTTP_PROXY and the like are ignored",
  },
  "allow-insecure-redirects": {
    type: "boolean",
    env: "PGNET_ALLOW_INSECURE_REDIRECTS",
    help: "follow redirects from https to http (refused by default)",
  },
  "log-failures": {
    type: "boolean",
    env: "PGNET_LOG_FAILURES",
    help: "log each failed attempt (status 400 or more, or no response) in one line: id, method, host, status or " +
      "error, duration; never headers, bodies or query strings; 10 lines a second at most",
  },
  json: { type: "boolean", help: "status: print JSON, also on a terminal" },
  privileges: {
    type: "string",
    help: "install: pgnet (each role sees and touches only its own requests, the default for new installs) or " +
      "pg_net (pg_net's grants: every role reads and changes every request and response)",
  },
  unlogged: {
    type: "boolean",
    help: "install: unlogged queue and response tables (faster, lost in a crash, like pg_net)",
  },
  yes: { type: "boolean", short: "y", help: "uninstall: confirm dropping schema net and everything in it" },
  help: { type: "boolean", short: "h", help: "show this help" },
  version: { type: "boolean", short: "V", help: "print the version" },
};

export function usage(): string {
  const lines = Object.entries(OPTIONS).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : "    "}--${name}${o.type === "string" ? " <value>" : ""}`;
    const extra = [o.default !== undefined ? `default ${o.default}` : "", o.env ? `env ${o.env}` : ""].filter(Boolean);
    return `  ${flag.padEnd(34)} ${o.help}${extra.length ? ` [${extra.join("; ")}]` : ""}`;
  });
  return `pgnet ${VERSION}: pg_net ${PG_NET_API_VERSION}'s HTTP API for any PostgreSQL, with the worker outside the database

Usage: pgnet [command] [options]

Commands:
  run          install or upgrade schema net if needed, then run the worker and the status server (default)
  install      install or upgrade schema net, then exit
  uninstall    drop schema net with its queued requests and responses (needs --yes)
  status       print the worker and queue status of the database as JSON
  version      print the version

With no database given anywhere, pgnet starts an embedded PostgreSQL in --data-dir. To serve several
databases, give -d once for each, or once with the all-databases flag (every one with schema net).
Durations take units (500ms, 30s, 5min, 6 hours); flags override environment variables, which override
the database's pg_net.* settings.

Options:
${lines.join("\n")}
`;
}

function invalid(name: string, expected: string, value: string): PgnetError {
  return new PgnetError("INVALID_ARGUMENT", `Invalid ${name}: expected ${expected}, got ${JSON.stringify(value)}`);
}

function port(name: string, value: string, allowOff: boolean): number | undefined {
  if (allowOff && value === "off") return undefined;
  if (!/^\d{1,5}$/.test(value) || Number(value) > 65535) {
    throw invalid(name, `a port from 0 to 65535${allowOff ? ' or "off"' : ""}`, value);
  }
  return Number(value);
}

/** A boolean environment variable: unset or empty is false; 1/true/yes and 0/false/no, any case. */
function flag(name: string, value: string | undefined): boolean {
  if (value === undefined || value === "") return false;
  if (/^(1|true|yes)$/i.test(value)) return true;
  if (/^(0|false|no)$/i.test(value)) return false;
  throw invalid(name, "1, true, yes, 0, false or no", value);
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Parses argv (without the program) and the environment. Throws PgnetError (exit 2) on bad input. */
export function parseCli(argv: string[], env: Record<string, string | undefined>): CliOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: Object.fromEntries(
        Object.entries(OPTIONS).map((
          [k, o],
        ) => [k, { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) }]),
      ),
    });
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /Unknown option '([^']+)'/.exec(message)?.[1];
    const text = unknown ? `Unknown option ${JSON.stringify(unknown)}` : message.split(/\n|\. /)[0];
    throw new PgnetError("INVALID_ARGUMENT", `${text}; see pgnet --help`);
  }
  const { values, positionals } = parsed as {
    values: Record<string, string | string[] | boolean | undefined>;
    positionals: string[];
  };
  if (positionals.length > 1) {
    throw new PgnetError("INVALID_ARGUMENT", `Unexpected argument ${JSON.stringify(positionals[1])}; see pgnet --help`);
  }
  const first = positionals[0] ?? "run";
  if (!COMMANDS.includes(first as Command)) {
    throw invalid("command", COMMANDS.join(", "), first);
  }
  const command: Command = values.help ? "help" : values.version ? "version" : first as Command;

  const get = (name: string): string | undefined => {
    const v = values[name];
    if (typeof v === "string") return v;
    const o = OPTIONS[name]!;
    return (o.env && env[o.env]) || o.default;
  };
  const origin = (name: string) => (typeof values[name] === "string" ? `--${name}` : OPTIONS[name]!.env ?? `--${name}`);

  const settings: SettingValues = {};
  for (const spec of SETTINGS) {
    // only explicit flags go here: resolveSettings reads the environment itself, below the flags
    const v = values[spec.flag];
    if (typeof v === "string") settings[spec.flag as SettingFlag] = v;
  }

  const logLevel = get("log-level")!;
  if (!LOG_LEVELS.includes(logLevel as LogLevel)) throw invalid(origin("log-level"), LOG_LEVELS.join(", "), logLevel);
  const logFormat = get("log-format")!;
  if (!LOG_FORMATS.includes(logFormat as LogFormat)) {
    throw invalid(origin("log-format"), LOG_FORMATS.join(" or "), logFormat);
  }

  const statusHost = get("status-host")!;
  const statusPort = port(origin("status-port"), get("status-port")!, true);
  const statusToken = get("status-token");
  if (statusPort !== undefined && !isLoopback(statusHost) && !statusToken) {
    throw new PgnetError(
      "STATUS_TOKEN_REQUIRED",
      `The status server would listen on ${statusHost}, beyond loopback: set --status-token (or PGNET_STATUS_TOKEN) ` +
        "so that POST /reload and /restart need it, or use --status-host 127.0.0.1",
    );
  }

  const egressPreset = get("egress")!;
  if (egressPreset !== "default" && egressPreset !== "public") {
    throw invalid(origin("egress"), "default or public", egressPreset);
  }
  const list = (name: string) => {
    const text = get(name);
    return text === undefined ? [] : EgressPolicy.parseList(text, origin(name));
  };
  const insecure = values["allow-insecure-redirects"] === true ||
    flag(origin("allow-insecure-redirects"), env.PGNET_ALLOW_INSECURE_REDIRECTS);
  const egress: EgressOptions = {
    preset: egressPreset,
    allow: list("egress-allow"),
    deny: list("egress-deny"),
    allowInsecureRedirects: insecure,
  };
  const caFile = get("ca-file");
  let ca: string | undefined;
  if (caFile !== undefined) {
    try {
      ca = readFileSync(caFile, "utf8");
    } catch (error) {
      throw invalid(origin("ca-file"), "a readable PEM file", `${caFile} (${(error as Error).message})`);
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----")) {
      throw invalid(origin("ca-file"), "a PEM file of certificates", caFile);
    }
  }
  const proxyText = get("proxy");
  let proxy: Proxy | undefined;
  if (proxyText !== undefined && proxyText !== "") {
    try {
      proxy = parseProxy(proxyText);
    } catch (error) {
      const shown = proxyText.replace(/\/\/([^/@:]*):[^/@]*@/, "//$1:***@"); // never a password in an error
      throw invalid(origin("proxy"), "an http://host:port URL", `${shown} (${(error as Error).message})`);
    }
  }
  const databases = Array.isArray(values.database) ? values.database as string[] : [];
  const allDatabases = values["all-databases"] === true || flag(origin("all-databases"), env.PGNET_ALL_DATABASES);
  if (allDatabases && databases.length > 1) {
    throw new PgnetError(
      "INVALID_ARGUMENT",
      "--all-databases serves every database of one server: give --database once (a database on that server), or not at all",
    );
  }
  if (allDatabases && command !== "run") {
    throw new PgnetError(
      "INVALID_ARGUMENT",
      `--all-databases is for pgnet run (it serves the databases that have schema net); ${command} takes --database`,
    );
  }
  let discoveryIntervalMs: number;
  try {
    discoveryIntervalMs = parseDuration(get("discovery-interval")!, "s");
  } catch {
    throw invalid(origin("discovery-interval"), "a duration such as 30s", get("discovery-interval")!);
  }
  if (!(discoveryIntervalMs >= 100)) {
    throw invalid(origin("discovery-interval"), "a duration of 100ms or more", get("discovery-interval")!);
  }
  const privileges = values.privileges as string | undefined;
  if (privileges !== undefined && !PRIVILEGES.includes(privileges as Privileges)) {
    throw invalid("--privileges", PRIVILEGES.join(" or "), privileges);
  }
  return {
    command,
    databases,
    allDatabases,
    discoveryIntervalMs,
    dataDir: get("data-dir")!,
    embeddedPort: port(origin("embedded-port"), get("embedded-port")!, false)!,
    settings,
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
    statusHost,
    ...(statusPort !== undefined ? { statusPort } : {}),
    ...(statusToken ? { statusToken } : {}),
    unlogged: values.unlogged === true,
    egress,
    ...(ca !== undefined ? { ca } : {}),
    ...(proxy ? { proxy } : {}),
    ...(privileges !== undefined ? { privileges: privileges as Privileges } : {}),
    logFailures: values["log-failures"] === true || flag(origin("log-failures"), env.PGNET_LOG_FAILURES),
    json: values.json === true,
    yes: values.yes === true,
  };
}
