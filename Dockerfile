# Build: docker build -t chatrelay .
# Run:   docker run -p 9090:9090 -p 8080:8080 chatrelay

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
# Modules first, in their own layer, so code changes don't re-download them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/chatrelay ./cmd/chatrelay

# distroless/static carries CA certificates and a nonroot user, nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/chatrelay /usr/local/bin/chatrelay
USER nonroot:nonroot
EXPOSE 9090 8080
ENTRYPOINT ["/usr/local/bin/chatrelay"]
