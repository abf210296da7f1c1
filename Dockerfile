# Ferry on the official Deno image. Not built in our CI (no Docker engine there); kept minimal.
FROM denoland/deno:2.9.6
WORKDIR /app
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
COPY config ./config
RUN deno cache --frozen main.ts
USER deno
EXPOSE 8080 9901
# The admin listener needs a token: docker run -e FERRY_ADMIN_TOKEN=$(openssl rand -hex 16) ...
ENTRYPOINT ["deno", "run", "--allow-net", "--allow-read", "--allow-env", "--unstable-no-legacy-abort", "main.ts"]
CMD ["--config", "config/container.yaml"]
