/*
 * nfq_accept: an accept-all NFQUEUE consumer, the floor of any userspace verdict.
 *
 * Built by bench/bench_dataplane.py at bench time (gcc + libnetfilter-queue-dev):
 *     gcc -O2 -o nfq_accept nfq_accept.c -lnetfilter_queue -lnfnetlink
 * Usage: nfq_accept QUEUE_NUM [COPY_RANGE]
 *
 * It binds like the agent's reader (python-netfilterqueue): copy up to
 * COPY_RANGE bytes of each packet (default 4016, the agent's), at most 4096
 * packets held by the kernel, one message read per recv() into a 4 KB buffer.
 * It prints "ready" once bound and, on SIGTERM or SIGINT, "judged N" before
 * unbinding.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define DEFAULT_COPY_RANGE 4016
#define MAX_QUEUE_LEN 4096
#define RCVBUF_BYTES (4u * 1024u * 1024u)

static volatile sig_atomic_t stop_requested;
static unsigned long long judged;

static void on_signal(int signum)
{
	(void)signum;
	stop_requested = 1;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);

	(void)msg;
	(void)data;
	if (ph == NULL)
		return 0;
	judged++;
	return nfq_set_verdict(qh, ntohl(ph->packet_id), NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv)
{
	struct nfq_handle *h;
	struct nfq_q_handle *qh;
	struct sigaction sa;
	char buf[4096] __attribute__((aligned));
	int fd;

	unsigned int copy_range = DEFAULT_COPY_RANGE;

	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: %s QUEUE_NUM [COPY_RANGE]\n", argv[0]);
		return 2;
	}
	if (argc == 3)
		copy_range = (unsigned int)strtoul(argv[2], NULL, 10);
	h = nfq_open();
	if (h == NULL) {
		perror("nfq_open");
		return 1;
	}
	qh = nfq_create_queue(h, (unsigned short)atoi(argv[1]), on_packet, NULL);
	if (qh == NULL) {
		perror("nfq_create_queue");
		return 1;
	}
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, copy_range) < 0) {
		perror("nfq_set_mode");
		return 1;
	}
	nfq_set_queue_maxlen(qh, MAX_QUEUE_LEN);
	nfnl_rcvbufsiz(nfq_nfnlh(h), RCVBUF_BYTES);

	/* No SA_RESTART: a signal interrupts recv() so the loop sees stop_requested. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	fd = nfq_fd(h);
	printf("ready\n");
	fflush(stdout);
	while (!stop_requested) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		if (n >= 0) {
			nfq_handle_packet(h, buf, (int)n);
			continue;
		}
		if (errno == EINTR || errno == ENOBUFS)
			continue; /* ENOBUFS: the kernel dropped a message for us; keep going */
		perror("recv");
		break;
	}
	printf("judged %llu\n", judged);
	fflush(stdout);
	nfq_destroy_queue(qh);
	nfq_close(h);
	return 0;
}
