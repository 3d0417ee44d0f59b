// Text-to-video with the wanrt library over a tritonserver serving `wan-export triton`'s repository.
//   embed ENGINES_DIR TRITON_URL TOKENS.json OUT_DIR    (TOKENS.json: wan-rt tokenize --engines ... --out ...)
#include <wanrt/wanrt.h>

#include <iostream>

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: embed ENGINES_DIR TRITON_URL TOKENS.json OUT_DIR\n";
        return 2;
    }
    try {
        wanrt::Manifest manifest = wanrt::load_manifest(argv[1], /*verify=*/false);  // shapes, defaults, I/O names
        wanrt::TritonOptions options;
        options.url = argv[2];
        wanrt::TritonBackend triton(options);  // or wanrt::TensorRTBackend, or your own wanrt::Backend
        triton.check_models(manifest, {"text_encoder", "dit", "vae_decoder_first", "vae_decoder_step"});

        wanrt::GenerationRequest request;  // zero / empty fields: the manifest's defaults
        request.tokens = wanrt::read_token_file(argv[3], manifest);
        request.seed = 42;
        wanrt::Pipeline pipeline(manifest, triton);
        wanrt::GenerationResult result = pipeline.generate(request);  // text encoder + guided denoising loop
        wanrt::write_npy(std::string(argv[4]) + "/latents.npy", result.latents);

        wanrt::NpyVideoWriter video(std::string(argv[4]) + "/frames.npy");  // uint8 [F, H, W, 3]
        pipeline.decode(result.latents, [&](const wanrt::Tensor& pixels) { video.write(pixels); });
        video.close();
        std::cout << result.summary() << "\n";
    } catch (const wanrt::Error& e) {  // bad input or environment: one line with the fix
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
