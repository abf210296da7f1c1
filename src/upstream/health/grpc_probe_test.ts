import assert from "node:assert/strict";
import { decodeHealthCheckResponse, encodeHealthCheckRequest } from "./grpc_probe.ts";

Deno.test("grpc probe: HealthCheckRequest encodes the service as field 1", () => {
  assert.deepEqual([...encodeHealthCheckRequest("")], [0, 0, 0, 0, 0]);
  assert.deepEqual(
    [...encodeHealthCheckRequest("a.B")],
    [0, 0, 0, 0, 5, 0x0a, 3, 0x61, 0x2e, 0x42],
  );
  // A name of 200 bytes needs a two-byte varint length (200 = 0xc8 0x01).
  const long = encodeHealthCheckRequest("x".repeat(200));
  assert.deepEqual([...long.subarray(0, 8)], [0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
  assert.equal(long.length, 5 + 203);
});

Deno.test("grpc probe: HealthCheckResponse status, unknown fields skipped, bad bytes refused", () => {
  const msg = (...b: number[]) => new Uint8Array([0, 0, 0, 0, b.length, ...b]);
  assert.equal(decodeHealthCheckResponse(msg(0x08, 1)), 1);
  assert.equal(decodeHealthCheckResponse(msg(0x08, 2)), 2);
  assert.equal(decodeHealthCheckResponse(msg()), 0, "an empty message is status UNKNOWN (0)");
  // Field 2 (string "hi") then field 1: the unknown field is skipped.
  assert.equal(decodeHealthCheckResponse(msg(0x12, 2, 0x68, 0x69, 0x08, 1)), 1);
  assert.equal(decodeHealthCheckResponse(new Uint8Array([1, 0, 0, 0, 2, 0x08, 1])), undefined);
  assert.equal(decodeHealthCheckResponse(new Uint8Array([0, 0, 0, 0, 3, 0x08, 1])), undefined);
  assert.equal(decodeHealthCheckResponse(msg(0x08)), undefined, "truncated varint");
  assert.equal(decodeHealthCheckResponse(msg(0x0b)), undefined, "wire type 3 is not accepted");
});
