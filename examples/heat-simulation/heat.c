/* heat.c - 2-D heat diffusion (explicit Jacobi stencil) with MPI row decomposition.
 *
 *   mpiexec -n P ./heat [NX NY STEPS [CHECKPOINT_EVERY [STEP_DELAY_US]]]   (defaults 160 120 4000 500 0)
 *
 * The plate is NX columns by NY rows. Its edges are held at fixed temperatures (top 1.0, the
 * others 0.0) and a hot disc (1.0) sits near the centre. Every rank owns a band of rows plus one
 * ghost ("halo") row above and below; after each step neighbours swap their edge rows with
 * MPI_Sendrecv. Every rank writes its band to part-<rank>.csv in its working directory:
 *
 *   # heat part rank=R ranks=P nx=NX ny=NY steps=S row0=FIRST rows=COUNT host=HOST
 *   v,v,v,...        (COUNT lines of NX values, global rows FIRST..FIRST+COUNT-1)
 *
 * Checkpoints (docs/checkpoints.md): every CHECKPOINT_EVERY steps rank 0 gathers the plate and writes
 * restart.bin (written to restart.bin.tmp, then renamed: the file under its name is always whole). When
 * MPIBATCH_RESTART=1 (mpibatch restored a checkpoint before the program started), rank 0 reads it back and
 * the ranks go on from its step, so an interrupted run ends with the same plate, bit for bit.
 * STEP_DELAY_US slows every step down (rehearsals of a long run).
 *
 * stitch.py puts the parts back together. The update of each cell only reads its 4 neighbours
 * from the previous step, so any number of ranks gives bit-for-bit the same plate as one rank.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALPHA 0.2 /* diffusion number; explicit scheme is stable for ALPHA <= 0.25 */

static int is_source(int gi, int j, int nx, int ny) {
    double cy = ny * 0.55, cx = nx * 0.4, r = (nx < ny ? nx : ny) * 0.12;
    double dy = gi - cy, dx = j - cx;
    return dy * dy + dx * dx <= r * r;
}

/* Fixed-temperature cells: the plate's border and the hot disc. */
static int fixed_value(int gi, int j, int nx, int ny, double *v) {
    if (gi == 0) { *v = 1.0; return 1; }
    if (gi == ny - 1 || j == 0 || j == nx - 1) { *v = 0.0; return 1; }
    if (is_source(gi, j, nx, ny)) { *v = 1.0; return 1; }
    return 0;
}

/* The band layout: rank r owns rows [row0(r), row0(r) + rows(r)). */
static int band_rows(int r, int ny, int size) { return ny / size + (r < ny % size); }
static int band_row0(int r, int ny, int size) { return r * (ny / size) + (r < ny % size ? r : ny % size); }

/* restart.bin: "HEAT1" nx ny step, then the plate row by row. Rank 0 gathers every band. */
static void write_checkpoint(const double *u, int rows, int nx, int ny, int step, int rank, int size) {
    int *counts = NULL, *displs = NULL;
    double *plate = NULL;
    if (rank == 0) {
        counts = malloc(sizeof *counts * size);
        displs = malloc(sizeof *displs * size);
        plate = malloc(sizeof *plate * (size_t)nx * ny);
        if (!counts || !displs || !plate) { fprintf(stderr, "heat: out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 3); }
        for (int r = 0; r < size; r++) { counts[r] = band_rows(r, ny, size) * nx; displs[r] = band_row0(r, ny, size) * nx; }
    }
    MPI_Gatherv(&u[nx], rows * nx, MPI_DOUBLE, plate, counts, displs, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        FILE *f = fopen("restart.bin.tmp", "wb");
        int head[3] = {nx, ny, step};
        if (!f || fwrite("HEAT1", 1, 5, f) != 5 || fwrite(head, sizeof *head, 3, f) != 3
            || fwrite(plate, sizeof *plate, (size_t)nx * ny, f) != (size_t)nx * ny || fclose(f) != 0
            || rename("restart.bin.tmp", "restart.bin") != 0) {
            perror("heat: restart.bin");
            MPI_Abort(MPI_COMM_WORLD, 4);
        }
        free(counts); free(displs); free(plate);
    }
}

/* The step restart.bin holds, its plate scattered into every rank's band of u; 0 without a checkpoint. */
static int read_checkpoint(double *u, int rows, int nx, int ny, int rank, int size) {
    const char *restart = getenv("MPIBATCH_RESTART");
    if (!restart || strcmp(restart, "1") != 0) return 0;
    int step = -1, *counts = NULL, *displs = NULL;
    double *plate = NULL;
    if (rank == 0) {
        FILE *f = fopen("restart.bin", "rb");
        char magic[5];
        int head[3];
        plate = malloc(sizeof *plate * (size_t)nx * ny);
        counts = malloc(sizeof *counts * size);
        displs = malloc(sizeof *displs * size);
        if (f && plate && counts && displs && fread(magic, 1, 5, f) == 5 && memcmp(magic, "HEAT1", 5) == 0
            && fread(head, sizeof *head, 3, f) == 3 && head[0] == nx && head[1] == ny
            && fread(plate, sizeof *plate, (size_t)nx * ny, f) == (size_t)nx * ny)
            step = head[2];
        if (f) fclose(f);
        if (step < 0) fprintf(stderr, "heat: MPIBATCH_RESTART=1 but restart.bin is missing or not a %dx%d plate\n", nx, ny);
        for (int r = 0; r < size; r++) { counts[r] = band_rows(r, ny, size) * nx; displs[r] = band_row0(r, ny, size) * nx; }
    }
    MPI_Bcast(&step, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (step < 0) MPI_Abort(MPI_COMM_WORLD, 5);
    MPI_Scatterv(plate, counts, displs, MPI_DOUBLE, &u[nx], rows * nx, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (rank == 0) { free(plate); free(counts); free(displs); printf("heat: restarted from step %d\n", step); }
    return step;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int nx = argc > 1 ? atoi(argv[1]) : 160;
    int ny = argc > 2 ? atoi(argv[2]) : 120;
    int steps = argc > 3 ? atoi(argv[3]) : 4000;
    int every = argc > 4 ? atoi(argv[4]) : 500;
    long delay_us = argc > 5 ? atol(argv[5]) : 0;
    if (nx < 3 || ny < size || steps < 0) {
        if (rank == 0) fprintf(stderr, "heat: need NX >= 3, NY >= number of ranks (%d), STEPS >= 0\n", size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    /* Rows [row0, row0 + rows): the first ny % size ranks get one extra row. */
    int rows = band_rows(rank, ny, size);
    int row0 = band_row0(rank, ny, size);
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL;
    int down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;

    /* Local rows 1..rows are ours; 0 and rows+1 are halos. */
    size_t n = (size_t)(rows + 2) * nx;
    double *u = calloc(n, sizeof *u), *w = calloc(n, sizeof *w);
    if (!u || !w) { fprintf(stderr, "heat: out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 3); }
    for (int i = 1; i <= rows; i++)
        for (int j = 0; j < nx; j++) {
            double v;
            if (fixed_value(row0 + i - 1, j, nx, ny, &v)) u[(size_t)i * nx + j] = v;
        }
    int first = read_checkpoint(u, rows, nx, ny, rank, size);
    memcpy(w, u, n * sizeof *u);

    double t0 = MPI_Wtime();
    struct timespec pause = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    for (int s = first; s < steps; s++) {
        /* Halo exchange: send my first row up and receive my bottom halo from below, then the reverse. */
        MPI_Sendrecv(&u[(size_t)1 * nx], nx, MPI_DOUBLE, up, 0,
                     &u[(size_t)(rows + 1) * nx], nx, MPI_DOUBLE, down, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(&u[(size_t)rows * nx], nx, MPI_DOUBLE, down, 1,
                     &u[0], nx, MPI_DOUBLE, up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (int i = 1; i <= rows; i++) {
            int gi = row0 + i - 1;
            for (int j = 0; j < nx; j++) {
                size_t k = (size_t)i * nx + j;
                double v;
                if (fixed_value(gi, j, nx, ny, &v)) { w[k] = v; continue; }
                w[k] = u[k] + ALPHA * (u[k - nx] + u[k + nx] + u[k - 1] + u[k + 1] - 4.0 * u[k]);
            }
        }
        double *t = u; u = w; w = t;
        if (delay_us > 0) nanosleep(&pause, NULL);
        if (every > 0 && (s + 1) % every == 0 && s + 1 < steps) write_checkpoint(u, rows, nx, ny, s + 1, rank, size);
    }
    double elapsed = MPI_Wtime() - t0;

    char host[MPI_MAX_PROCESSOR_NAME];
    int hlen;
    MPI_Get_processor_name(host, &hlen);
    char name[64];
    snprintf(name, sizeof name, "part-%d.csv", rank);
    FILE *f = fopen(name, "w");
    if (!f) { perror(name); MPI_Abort(MPI_COMM_WORLD, 4); }
    fprintf(f, "# heat part rank=%d ranks=%d nx=%d ny=%d steps=%d row0=%d rows=%d host=%s\n",
            rank, size, nx, ny, steps, row0, rows, host);
    double local = 0.0;
    for (int i = 1; i <= rows; i++) {
        for (int j = 0; j < nx; j++) {
            local += u[(size_t)i * nx + j];
            fprintf(f, j ? ",%.17g" : "%.17g", u[(size_t)i * nx + j]);
        }
        fputc('\n', f);
    }
    if (fclose(f) != 0) { perror(name); MPI_Abort(MPI_COMM_WORLD, 4); }

    /* Every rank reports where it ran; rank 0 prints the lines in rank order. */
    char line[256];
    snprintf(line, sizeof line, "rank %d/%d on %s: rows %d-%d -> %s", rank, size, host, row0,
             row0 + rows - 1, name);
    char *all = rank == 0 ? malloc((size_t)size * sizeof line) : NULL;
    MPI_Gather(line, sizeof line, MPI_CHAR, all, sizeof line, MPI_CHAR, 0, MPI_COMM_WORLD);
    double total = 0.0, slowest = 0.0;
    MPI_Reduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&elapsed, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        for (int r = 0; r < size; r++) printf("%s\n", all + (size_t)r * sizeof line);
        printf("heat: %dx%d plate, %d steps on %d ranks in %.3f s; mean temperature %.6f\n",
               nx, ny, steps, size, slowest, total / ((double)nx * ny));
        free(all);
    }
    free(u);
    free(w);
    MPI_Finalize();
    return 0;
}
