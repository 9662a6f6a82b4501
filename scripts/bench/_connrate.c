/* A lean new-connection load tool for `bench lb` (built with clang by _connrate.ts at bench time):
 * real sockets, one thread, epoll, so that a connection costs the client and the server only a
 * few system calls and the rate reflects the kernel's work per connection plus the path under
 * test (iptables' walk of KUBE-SERVICES on every new connection, cilia's programs on every
 * packet), not an HTTP client's or server's.
 *
 *   _connrate server PORT...              accepts on every PORT: reads 1 byte, writes 1 byte,
 *                                         closes (the server closes first: TIME_WAIT stays on
 *                                         the server, as with an HTTP server and
 *                                         `Connection: close`)
 *   _connrate client ADDR PORT SECONDS CONCURRENCY
 *                                         keeps CONCURRENCY nonblocking connections in flight:
 *                                         connect, write 1 byte, read the 1-byte answer and the
 *                                         server's FIN, close; prints one JSON line
 *                                         {"connections","errors","seconds","cpuSeconds"}
 *
 * A connection counts only when the answer byte and the FIN came back; a refused, reset or
 * stuck (2 s) connection counts as an error. IPv4 and IPv6 addresses both work.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SLOTS 1024
#define STUCK_NS 2000000000LL

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "_connrate: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int server(int argc, char **argv)
{
	struct epoll_event ev, evs[256];
	int ep = epoll_create1(0), one = 1, nl = argc - 2;
	int listeners[16];

	if (ep < 0)
		die("epoll_create1");
	if (nl < 1 || nl > 16) {
		fprintf(stderr, "_connrate: server wants 1 to 16 ports, got %d\n", nl);
		return 2;
	}
	for (int i = 0; i < nl; i++) {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = in6addr_any };
		int port = atoi(argv[i + 2]), zero = 0;
		int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);

		if (port <= 0 || port > 65535) {
			fprintf(stderr, "_connrate: invalid port \"%s\"\n", argv[i + 2]);
			return 2;
		}
		if (fd < 0)
			die("socket");
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)); /* IPv4 as well */
		a.sin6_port = htons(port);
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
			die("bind");
		if (listen(fd, 4096) < 0)
			die("listen");
		listeners[i] = fd;
		ev.events = EPOLLIN;
		ev.data.u64 = (1ULL << 32) | (unsigned)fd; /* a listener */
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			die("epoll_ctl");
	}
	(void)listeners;
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = (int)(evs[i].data.u64 & 0xffffffff);
			char b[64];

			if (evs[i].data.u64 >> 32) {
				int c;

				while ((c = accept4(fd, 0, 0, SOCK_NONBLOCK)) >= 0) {
					ev.events = EPOLLIN | EPOLLRDHUP;
					ev.data.u64 = (unsigned)c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
						close(c);
				}
				continue;
			}
			/* The request byte (or EOF / an error): answer if there was one, then close. */
			if (read(fd, b, sizeof(b)) > 0 && write(fd, "y", 1) < 0) {
				/* the client is gone: nothing to answer */
			}
			close(fd); /* also leaves the epoll set */
		}
	}
}

enum { S_CONNECTING, S_READING };

struct slot {
	int fd;
	int state;
	int got;
	long long t0;
};

static int open_conn(int ep, struct slot *s, unsigned idx, const struct sockaddr *a,
		     socklen_t alen)
{
	struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = idx };

	s->fd = socket(a->sa_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (s->fd < 0)
		die("socket");
	s->state = S_CONNECTING;
	s->got = 0;
	s->t0 = now_ns();
	if (connect(s->fd, a, alen) < 0 && errno != EINPROGRESS) {
		close(s->fd);
		s->fd = -1;
		return -1;
	}
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0)
		die("epoll_ctl");
	return 0;
}

static int client(char **argv)
{
	struct sockaddr_storage ss = {};
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	socklen_t alen;
	int port = atoi(argv[3]), conc = atoi(argv[5]);
	double seconds = atof(argv[4]);
	long long ok = 0, errors = 0, t0, end, last_scan;
	struct slot slots[MAX_SLOTS];
	struct epoll_event evs[MAX_SLOTS];
	struct rusage ru;
	int ep;

	if (inet_pton(AF_INET, argv[2], &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		alen = sizeof(*a4);
	} else if (inet_pton(AF_INET6, argv[2], &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		alen = sizeof(*a6);
	} else {
		fprintf(stderr, "_connrate: invalid address \"%s\"\n", argv[2]);
		return 2;
	}
	if (port <= 0 || port > 65535 || conc < 1 || conc > MAX_SLOTS || !(seconds > 0)) {
		fprintf(stderr, "_connrate: invalid port, seconds or concurrency\n");
		return 2;
	}
	ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	t0 = last_scan = now_ns();
	end = t0 + (long long)(seconds * 1e9);
	for (int i = 0; i < conc; i++)
		while (open_conn(ep, &slots[i], i, (struct sockaddr *)&ss, alen) < 0)
			errors++;
	for (;;) {
		long long t = now_ns();
		int n;

		if (t >= end)
			break;
		if (t - last_scan > 100000000LL) { /* every 100 ms: stuck connections are errors */
			last_scan = t;
			for (int i = 0; i < conc; i++) {
				if (t - slots[i].t0 < STUCK_NS)
					continue;
				errors++;
				close(slots[i].fd);
				while (open_conn(ep, &slots[i], i, (struct sockaddr *)&ss, alen) < 0)
					errors++;
			}
		}
		n = epoll_wait(ep, evs, conc, 100);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			unsigned idx = evs[i].data.u32;
			struct slot *s = &slots[idx];
			int done = 0, failed = 0;

			if (s->state == S_CONNECTING) {
				int err = 0;
				socklen_t l = sizeof(err);
				struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = idx };

				getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
				if (err || write(s->fd, "x", 1) != 1) {
					failed = 1;
				} else {
					s->state = S_READING;
					if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0)
						die("epoll_ctl");
				}
			} else {
				char b[64];
				ssize_t r;

				while ((r = read(s->fd, b, sizeof(b))) > 0)
					s->got = 1;
				if (r == 0)
					s->got ? (done = 1) : (failed = 1);
				else if (errno != EAGAIN)
					failed = 1;
			}
			if (!done && !failed)
				continue;
			done ? ok++ : errors++;
			close(s->fd);
			while (open_conn(ep, s, idx, (struct sockaddr *)&ss, alen) < 0)
				errors++;
		}
	}
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"connections\":%lld,\"errors\":%lld,\"seconds\":%.6f,\"cpuSeconds\":%.6f}\n", ok,
	       errors, (now_ns() - t0) / 1e9,
	       ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
		       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "server") == 0)
		return server(argc, argv);
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(argv);
	fprintf(stderr, "usage: _connrate server PORT... | _connrate client ADDR PORT SECONDS "
			"CONCURRENCY\n");
	return 2;
}
