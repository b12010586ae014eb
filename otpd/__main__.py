from otpd.cli import main

main()
