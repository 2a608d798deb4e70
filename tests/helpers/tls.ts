// A private certificate authority for TLS fixtures, made with openssl for each test run: a certificate for
// localhost and 127.0.0.1, one that has expired, and one for another name.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface KeyPair {
  key: Buffer;
  cert: Buffer;
}

export interface Certificates {
  /** the authority's certificate (PEM), to trust */
  ca: Buffer;
  /** its path, for --ca-file */
  caFile: string;
  localhost: KeyPair;
  expired: KeyPair;
  otherName: KeyPair;
  remove(): void;
}

export function makeCertificates(): Certificates {
  const dir = mkdtempSync(join(tmpdir(), "pgnet-tls-"));
  const path = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "ignore" });
  openssl(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    path("ca.key"),
    "-out",
    path("ca.pem"),
    "-days",
    "2",
    "-subj",
    "/CN=pgnet test authority",
  );
  const leaf = (name: string, subject: string, altNames: string, days: string): KeyPair => {
    openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      path(`${name}.key`),
      "-out",
      path(`${name}.csr`),
      "-subj",
      `/CN=${subject}`,
    );
    writeFileSync(path(`${name}.ext`), `subjectAltName=${altNames}\n`);
    openssl(
      "x509",
      "-req",
      "-in",
      path(`${name}.csr`),
      "-CA",
      path("ca.pem"),
      "-CAkey",
      path("ca.key"),
      "-CAcreateserial",
      "-out",
      path(`${name}.pem`),
      "-days",
      days,
      "-extfile",
      path(`${name}.ext`),
    );
    return { key: readFileSync(path(`${name}.key`)), cert: readFileSync(path(`${name}.pem`)) };
  };
  const certificates: Certificates = {
    ca: readFileSync(path("ca.pem")),
    caFile: path("ca.pem"),
    localhost: leaf("localhost", "localhost", "DNS:localhost,IP:127.0.0.1", "1"),
    // valid from now until now: expired a second later
    expired: leaf("expired", "localhost", "DNS:localhost,IP:127.0.0.1", "0"),
    otherName: leaf("other", "elsewhere.example", "DNS:elsewhere.example", "1"),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
  return certificates;
}
