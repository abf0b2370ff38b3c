/* dcl's instruction counter: a qemu TCG plugin (plugin API version 1, qemu 7.2) that counts the
 * guest instructions a program executes and writes "DCL-INSNS <count>" when it exits, to the file
 * named by its out= argument (stderr without one).
 *
 *   qemu-aarch64 -plugin ./libdcl_insn.so,out=/tmp/count.txt -L ROOTFS PROGRAM ...
 *
 * Every translated block adds its instruction count inline when it executes (no callback per
 * block), so counting costs little and the count does not depend on the host's load: the same
 * program on the same input gives the same count. The counter is one plain 64-bit add shared by
 * all guest threads; dcl runs every guest single-threaded, where it is exact. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insns;
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *unused) {
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (f == NULL) {
        fprintf(stderr, "DCL-ERROR cannot write the instruction count to %s\n", out_path);
        return;
    }
    fprintf(f, "DCL-INSNS %" PRIu64 "\n", insns);
    if (f != stderr) fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        } else {
            fprintf(stderr, "DCL-ERROR unknown plugin argument %s (only out=FILE)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
