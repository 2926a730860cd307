#!/usr/bin/env node
// An independent COSE implementation (npm's cose-js) on the other side of
// `moat seal` and `moat open`, driven by tests/integration/test_payload.py.
//
//   node cose_interop.js seal encrypt0|mac0|sign1 KEY.jwk TOPIC   < payload  > envelope
//   node cose_interop.js open encrypt0|mac0|sign1 KEY.jwk TOPIC   < envelope > payload
//
// KEY.jwk is a key file written by `moat keygen` (a JWK). The topic is the
// external AAD, as Moat uses it. Exit 0 on success; 1 with a one-line reason on
// stderr when cose-js refuses the envelope; 2 on a usage error.
'use strict';

const fs = require('fs');
const cose = require('cose-js');

function b64url (s) {
  return Buffer.from(s, 'base64url');
}

function readStdin () {
  return fs.readFileSync(0);
}

function usage (msg) {
  process.stderr.write('cose_interop: ' + msg + '\n');
  process.exit(2);
}

async function main () {
  const [op, kind, keyFile, topic] = process.argv.slice(2);
  if (!op || !kind || !keyFile || topic === undefined) usage('seal|open encrypt0|mac0|sign1 KEY.jwk TOPIC');
  const jwk = JSON.parse(fs.readFileSync(keyFile, 'utf8'));
  const aad = Buffer.from(topic, 'utf8');
  const input = readStdin();
  let out;
  if (kind === 'encrypt0') {
    if (jwk.kty !== 'oct') usage('encrypt0 needs an oct key');
    const key = b64url(jwk.k);
    if (op === 'seal') {
      out = await cose.encrypt.create({ p: { alg: 'A256GCM', kid: jwk.kid } }, input, { key }, { externalAAD: aad });
    } else {
      out = await cose.encrypt.read(input, key, { externalAAD: aad });
    }
  } else if (kind === 'mac0') {
    if (jwk.kty !== 'oct') usage('mac0 needs an oct key');
    const key = b64url(jwk.k);
    if (op === 'seal') {
      // cose-js names HMAC 256/256 (COSE algorithm 5) 'SHA-256'.
      out = await cose.mac.create({ p: { alg: 'SHA-256', kid: jwk.kid } }, input, { key }, aad);
    } else {
      out = await cose.mac.read(input, key, aad);
    }
  } else if (kind === 'sign1') {
    if (jwk.kty !== 'EC' || jwk.crv !== 'P-256') usage('sign1 needs a P-256 key (cose-js has no EdDSA)');
    if (op === 'seal') {
      if (!jwk.d) usage('sealing needs the private key');
      const signer = { key: { d: b64url(jwk.d) }, externalAAD: aad };
      out = await cose.sign.create({ p: { alg: 'ES256', kid: jwk.kid } }, input, signer);
    } else {
      const verifier = { key: { x: b64url(jwk.x), y: b64url(jwk.y), kid: jwk.kid }, externalAAD: aad };
      out = await cose.sign.verify(input, verifier);
    }
  } else {
    usage('unknown kind ' + kind);
  }
  process.stdout.write(out);
}

main().catch((err) => {
  process.stderr.write('cose_interop: refused: ' + (err && err.message ? err.message : String(err)) + '\n');
  process.exit(1);
});
