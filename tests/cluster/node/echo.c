/* A tiny HTTP server for node tests: answers every request on PORT (default 8080) with
 * "hello from <hostname>" and logs one line per request to stdout, so a test can check the
 * Pod's network, a Service in front of it and `kubectl logs`. Built static, no libc at run time. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    const char *port_env = getenv("PORT");
    int port = port_env ? atoi(port_env) : 8080;
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    signal(SIGPIPE, SIG_IGN);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 16) < 0) {
        perror("echo: listen");
        return 1;
    }
    printf("echo: listening on port %d as %s\n", port, host);
    fflush(stdout);

    for (unsigned long n = 1;; n++) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(fd, (struct sockaddr *)&peer, &len);
        if (c < 0) {
            continue;
        }
        char req[2048];
        ssize_t got = read(c, req, sizeof req - 1);
        req[got > 0 ? got : 0] = '\0';
        char *eol = strpbrk(req, "\r\n");
        if (eol) {
            *eol = '\0';
        }
        char body[300];
        int body_len = snprintf(body, sizeof body, "hello from %s\n", host);
        char head[200];
        int head_len = snprintf(head, sizeof head,
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                "Content-Length: %d\r\nConnection: close\r\n\r\n",
                                body_len);
        if (write(c, head, head_len) < 0 || write(c, body, body_len) < 0) {
            perror("echo: write");
        }
        close(c);
        printf("echo: request %lu from %s: %s\n", n, inet_ntoa(peer.sin_addr), req);
        fflush(stdout);
    }
}
