/* A TCP client for tests/e2e/services_socket_lb_test.ts (built with clang at test time): real
 * blocking sockets, so connect(2) and getpeername(2) run through the cgroup hooks of bpf/sock.c.
 * Each connection writes 1 byte and reads one line (the backend's name, tests/e2e/_services_lab.ts
 * NAME_SERVER).
 *
 *   _sock_peer count ADDR PORT N MS   N connections one after another; prints a JSON array of
 *                                     {"peer":"ADDR:PORT","name":"b1"} (getpeername's answer)
 *                                     or {"err":"ECONNREFUSED","ms":3}
 *   _sock_peer for ADDR PORT MS       connections one after another for MS milliseconds; prints
 *                                     {"ok":N,"errors":N,"names":{"b1":N,...},"err":"last error"}
 *   _sock_peer hold ADDR PORT N       N connections kept open: prints their names (a JSON array),
 *                                     then after a line on stdin the names the same connections
 *                                     answer with now
 * IPv6 addresses are written "[addr]:port" in "peer".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage dst;
static socklen_t dst_len;

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void parse_dst(const char *addr, const char *port)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)&dst;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&dst;

	memset(&dst, 0, sizeof(dst));
	if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(atoi(port));
		dst_len = sizeof(*a4);
	} else if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(atoi(port));
		dst_len = sizeof(*a6);
	} else {
		fprintf(stderr, "_sock_peer: not an address: %s\n", addr);
		exit(2);
	}
}

static const char *err_name(int e)
{
	switch (e) {
	case ECONNREFUSED: return "ECONNREFUSED";
	case ETIMEDOUT: return "ETIMEDOUT";
	case EAGAIN: return "ETIMEDOUT"; /* SO_RCVTIMEO/SO_SNDTIMEO ran out */
	case EINPROGRESS: return "ETIMEDOUT";
	case EPERM: return "EPERM";
	case ECONNRESET: return "ECONNRESET";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case ENETUNREACH: return "ENETUNREACH";
	default: return "EOTHER";
	}
}

/* Connects with a timeout of ms for connect and each read; the socket, or -errno. */
static int open_conn(int ms, char *peer, size_t peer_len)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	struct sockaddr_storage p;
	socklen_t pl = sizeof(p);
	char ip[INET6_ADDRSTRLEN];
	int fd = socket(dst.ss_family, SOCK_STREAM, 0), e;

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&dst, dst_len) < 0) {
		e = errno;
		close(fd);
		return -e;
	}
	if (getpeername(fd, (struct sockaddr *)&p, &pl) < 0) {
		e = errno;
		close(fd);
		return -e;
	}
	if (p.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&p;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(peer, peer_len, "%s:%d", ip, ntohs(a->sin_port));
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&p;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(peer, peer_len, "[%s]:%d", ip, ntohs(a->sin6_port));
	}
	return fd;
}

/* Writes 1 byte and reads the answer line into name; 0 or -errno. */
static int ask(int fd, char *name, size_t len)
{
	size_t got = 0;
	ssize_t n;

	if (write(fd, "x", 1) != 1)
		return -errno;
	while (got < len - 1) {
		n = read(fd, name + got, len - 1 - got);
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		got += n;
		if (name[got - 1] == '\n')
			break;
	}
	name[got] = 0;
	if (got && name[got - 1] == '\n')
		name[got - 1] = 0;
	return 0;
}

/* One connection: 0 and name/peer filled, or -errno. */
static int one(int ms, char *peer, char *name)
{
	int fd = open_conn(ms, peer, 80), r;

	if (fd < 0)
		return fd;
	r = ask(fd, name, 64);
	close(fd);
	return r;
}

int main(int argc, char **argv)
{
	char peer[80], name[64];
	int i, r;

	if (argc < 5) {
		fprintf(stderr, "usage: _sock_peer count|for|hold ADDR PORT ...\n");
		return 2;
	}
	parse_dst(argv[2], argv[3]);
	if (!strcmp(argv[1], "count") && argc == 6) {
		int n = atoi(argv[4]), ms = atoi(argv[5]);
		printf("[");
		for (i = 0; i < n; i++) {
			long long t0 = now_ms();
			r = one(ms, peer, name);
			if (r == 0)
				printf("%s{\"peer\":\"%s\",\"name\":\"%s\"}", i ? "," : "", peer, name);
			else
				printf("%s{\"err\":\"%s\",\"ms\":%lld}", i ? "," : "", err_name(-r),
				       now_ms() - t0);
		}
		printf("]\n");
		return 0;
	}
	if (!strcmp(argv[1], "for")) {
		long long end = now_ms() + atoi(argv[4]);
		int ok = 0, errors = 0, b1 = 0, b2 = 0, other = 0;
		const char *last = "";
		while (now_ms() < end) {
			usleep(2000);
			r = one(2000, peer, name);
			if (r) {
				errors++;
				last = err_name(-r);
				continue;
			}
			ok++;
			if (!strcmp(name, "b1")) b1++;
			else if (!strcmp(name, "b2")) b2++;
			else other++;
		}
		printf("{\"ok\":%d,\"errors\":%d,\"names\":{\"b1\":%d,\"b2\":%d,\"other\":%d},\"err\":\"%s\"}\n",
		       ok, errors, b1, b2, other, last);
		return 0;
	}
	if (!strcmp(argv[1], "hold")) {
		int n = atoi(argv[4]), fds[64];
		char line[16];
		if (n > 64)
			n = 64;
		for (i = 0; i < n; i++) {
			fds[i] = open_conn(3000, peer, sizeof(peer));
			if (fds[i] < 0) {
				fprintf(stderr, "_sock_peer: connect: %s\n", err_name(-fds[i]));
				return 1;
			}
		}
		for (int round = 0; round < 2; round++) {
			if (round == 1 && !fgets(line, sizeof(line), stdin))
				return 1;
			printf("[");
			for (i = 0; i < n; i++) {
				r = ask(fds[i], name, sizeof(name));
				printf("%s\"%s\"", i ? "," : "", r ? err_name(-r) : name);
			}
			printf("]\n");
			fflush(stdout);
		}
		return 0;
	}
	fprintf(stderr, "_sock_peer: unknown mode or arguments\n");
	return 2;
}
