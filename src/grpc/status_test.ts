import assert from "node:assert/strict";
import {
  encodeGrpcMessage,
  formatGrpcTimeout,
  GrpcStatus,
  grpcStatusOfHttp,
  outcomeOfGrpcStatus,
  parseGrpcTimeout,
  trailersOnly,
} from "./status.ts";

Deno.test("grpcStatusOfHttp follows the gRPC HTTP-to-status table (503 is UNAVAILABLE)", () => {
  // https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
  const table: [number, number][] = [
    [400, GrpcStatus.INTERNAL],
    [401, GrpcStatus.UNAUTHENTICATED],
    [403, GrpcStatus.PERMISSION_DENIED],
    [404, GrpcStatus.UNIMPLEMENTED],
    [429, GrpcStatus.UNAVAILABLE],
    [502, GrpcStatus.UNAVAILABLE],
    [503, GrpcStatus.UNAVAILABLE],
    [504, GrpcStatus.UNAVAILABLE],
    [500, GrpcStatus.UNKNOWN],
    [418, GrpcStatus.UNKNOWN],
    [301, GrpcStatus.UNKNOWN],
  ];
  for (const [http, grpc] of table) assert.equal(grpcStatusOfHttp(http), grpc, `HTTP ${http}`);
});

Deno.test("outcomeOfGrpcStatus: UNAVAILABLE is a gateway failure, server faults are 5xx, the rest success", () => {
  assert.equal(outcomeOfGrpcStatus(GrpcStatus.UNAVAILABLE), "gateway");
  for (const s of [2, 4, 13, 15]) assert.equal(outcomeOfGrpcStatus(s), "5xx", String(s));
  for (const s of [0, 1, 3, 5, 7, 8, 12, 16]) assert.equal(outcomeOfGrpcStatus(s), "success");
});

Deno.test("parseGrpcTimeout reads every unit and refuses malformed values", () => {
  assert.equal(parseGrpcTimeout("1H"), 3_600_000);
  assert.equal(parseGrpcTimeout("2M"), 120_000);
  assert.equal(parseGrpcTimeout("3S"), 3_000);
  assert.equal(parseGrpcTimeout("250m"), 250);
  assert.equal(parseGrpcTimeout("1500u"), 1.5);
  assert.equal(parseGrpcTimeout("2000000n"), 2);
  assert.equal(parseGrpcTimeout(undefined), undefined);
  for (const bad of ["", "5", "123456789m", "-1S", "1s", "1.5S", " 1S"]) {
    assert.equal(parseGrpcTimeout(bad), undefined, JSON.stringify(bad));
  }
});

Deno.test("formatGrpcTimeout rounds up to whole ms and stays within 8 digits", () => {
  assert.equal(formatGrpcTimeout(0.2), "1m");
  assert.equal(formatGrpcTimeout(1500.1), "1501m");
  assert.equal(formatGrpcTimeout(99_999_999), "99999999m");
  assert.equal(formatGrpcTimeout(100_000_000), "100000S");
  assert.equal(formatGrpcTimeout(1e15), "99999999H", "capped at the largest value (11,000 years)");
  for (const ms of [1, 42, 1e8, 1e12]) {
    const text = formatGrpcTimeout(ms);
    assert.match(text, /^\d{1,8}[mSH]$/);
    assert.ok(parseGrpcTimeout(text)! >= ms, `${ms} -> ${text} must not shorten the deadline`);
  }
});

Deno.test("encodeGrpcMessage percent-encodes '%' and bytes outside 0x20-0x7E; trailersOnly carries it", () => {
  assert.equal(encodeGrpcMessage("plain text"), "plain text");
  assert.equal(encodeGrpcMessage("100%"), "100%25");
  assert.equal(encodeGrpcMessage("a\nb"), "a%0Ab");
  assert.equal(encodeGrpcMessage("caf\u00e9"), "caf%C3%A9");
  assert.deepEqual(trailersOnly(GrpcStatus.UNAVAILABLE, "down 100%", [["x", "y"]]), [
    [":status", "200"],
    ["content-type", "application/grpc"],
    ["grpc-status", "14"],
    ["grpc-message", "down 100%25"],
    ["x", "y"],
  ]);
});
