/**
 * The config validator isolate (validator.ts): loads one config with the YAML parser and the
 * schema, posts the result back as plain data and is terminated.
 */
import {
  checkReadableFile,
  checkWritableFile,
  loadConfigFile,
  parseConfigText,
  validateConfig,
} from "./load.ts";
import { configFromEnv } from "./env.ts";
import { resolveConfigPath } from "./files.ts";
import type { LoadResult } from "./issues.ts";
import type { ValidateReply, ValidateRequest } from "./validator.ts";

function load(req: ValidateRequest): Promise<LoadResult> | LoadResult {
  switch (req.kind) {
    case "file":
      return loadConfigFile(req.path);
    case "text": {
      const file = req.file;
      return parseConfigText(req.text, req.label, {
        // Paths arrive resolved against the label's folder, ".": re-anchor them on the file's.
        checkFile: (p) => checkReadableFile(file ? resolveConfigPath(file, p) : p),
        checkWritable: checkWritableFile,
      });
    }
    case "env":
      return configFromEnv(req.env) ?? {
        ok: false,
        errors: [{
          file: "<env>",
          line: 0,
          column: 0,
          path: "",
          message: "expected PROXY_LISTEN_ADDR or PROXY_UPSTREAM_ADDRS",
        }],
      };
    case "data":
      return validateConfig(req.data, { file: req.label, checkFile: checkReadableFile });
  }
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<ValidateRequest>) => void) | null;
  postMessage(reply: ValidateReply): void;
};
scope.onmessage = async (e) => {
  let reply: ValidateReply;
  try {
    reply = { result: await load(e.data) };
  } catch (err) {
    reply = {
      thrown: err instanceof Error
        ? { name: err.name, message: err.message }
        : { name: "Error", message: String(err) },
    };
  }
  scope.postMessage(reply);
};
