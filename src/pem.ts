// PEM files named on the command line, read once when a command starts: for the model servers' TLS
// (src/fleet/tls.ts) and Temporal's (src/temporal/connection.ts), each refusing with its own error class.
// No message carries a file's contents.
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';

export type Refuse = (message: string) => Error;

export function readPem(flag: string, file: string, refuse: Refuse): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw refuse(`${flag} ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'unreadable'}); want a readable PEM file`);
  }
}

/** A client certificate and its key, refused unless the key is the certificate's. */
export function readKeyPair(certFlag: string, certFile: string, keyFlag: string, keyFile: string, refuse: Refuse): { cert: Buffer; key: Buffer } {
  const cert = readPem(certFlag, certFile, refuse);
  const key = readPem(keyFlag, keyFile, refuse);
  try {
    createSecureContext({ cert, key });
  } catch {
    throw refuse(`${certFlag} ${certFile} / ${keyFlag} ${keyFile}: not a PEM certificate and its matching private key`);
  }
  return { cert, key };
}
